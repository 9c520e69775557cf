"""`harness report`: tables (and needle heatmaps) of a task's records across methods and context
lengths, in Markdown for the docs site and papers. A pure reader of records; nothing is rerun.

A task that defines its own tables (`Task.report`, e.g. kv_compression's budgets) gets those.
Otherwise: one row per method, one column per context length. The value at a length comes from
the record's per-length metric (`accuracy@4096`, `perplexity@4096`) or, for needle, from its depth
x length grid; when several records cover the same (method, length), the one with more samples
wins. Records without per-length values get one row per record (`records_table`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from harness import records
from harness.errors import UserError
from harness.zoo.registry import generation_mark, model_key

METRIC_AT = {"needle": "accuracy", "passkey": "accuracy", "perplexity": "perplexity"}


def load(results: Path, task: str, model: str | None) -> list[dict]:
    folder = Path(results) / task
    if not folder.is_dir():
        raise UserError(f"no records for task {task!r} under {results}")
    out, skipped = [], 0
    for path in sorted(folder.glob("*/*/*.json")):
        try:
            rec = records.read(path)
        except ValueError:
            skipped += 1
            continue
        if model is None or rec["model"]["id"] == model:
            out.append(rec)
    if not out:
        raise UserError(
            f"no readable records for task {task!r}"
            + (f" and model {model}" if model else "")
            + f" under {results} ({skipped} unreadable)"
        )
    return out


def per_length(rec: dict, metric: str) -> dict[int, tuple[float, int]]:
    """{length: (value, n)} of one record."""
    grid = rec.get("details", {}).get("grid")
    if grid and metric == "accuracy":
        acc: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
        for cell in grid:
            acc[cell["context_length"]][0] += cell["accuracy"] * cell["n"]
            acc[cell["context_length"]][1] += cell["n"]
        return {L: (s / n, n) for L, (s, n) in acc.items() if n}
    out = {}
    for key, m in rec["metrics"].items():
        name, at, length = key.partition("@")
        if at and name == metric and length.isdigit():
            out[int(length)] = (m["value"], m.get("n") or 0)
    if not out and metric in rec["metrics"]:
        lengths = rec["task"]["params"].get("context_length") or []
        if len(lengths) == 1:
            m = rec["metrics"][metric]
            out[lengths[0]] = (m["value"], m.get("n") or 0)
    return out


def table(recs: list[dict], metric: str) -> tuple[list[int], dict[str, dict[int, float]]]:
    best: dict[tuple[str, str, int], tuple[float, int]] = {}
    for rec in recs:
        label = rec["method"]["name"] + _model_mark(rec, recs)
        for L, (value, n) in per_length(rec, metric).items():
            key = (label, model_key(rec["model"]), L)
            if key not in best or n > best[key][1]:
                best[key] = (value, n)
    rows: dict[str, dict[int, float]] = defaultdict(dict)
    for (label, _, L), (value, _) in best.items():
        rows[label][L] = value
    lengths = sorted({L for r in rows.values() for L in r})
    return lengths, dict(sorted(rows.items()))


def recs_models(recs: list[dict]) -> set[str]:
    """The models of the records, an older zoo generation's marked apart (harness.zoo.registry)."""
    return {model_key(r["model"]) for r in recs}


def _model_mark(rec: dict, recs: list[dict]) -> str:
    """What a row label adds after the method: the model when the table has several, else the zoo
    generation when the record's is older than the current one (" (zoo v1)")."""
    if len(recs_models(recs)) > 1:
        return f" ({model_key(rec['model'])})"
    return generation_mark(rec["model"])


def markdown(task: str, recs: list[dict], metric: str | None = None) -> str:
    if metric is None:
        from harness import registry

        try:
            own = registry.task(task)[0].report(recs)
        except UserError:  # records of a task this install does not register
            own = None
        if own:
            return own
    metric = metric or METRIC_AT.get(task) or recs[0]["main_metric"]
    lengths, rows = table(recs, metric)
    if not lengths:
        if any(metric in r["metrics"] for r in recs):
            return records_table(recs, [metric])
        raise UserError(f"records of {task} have no per-length {metric!r} values")
    fmt = (lambda v: f"{v:.3g}" if v >= 100 else f"{v:.2f}") if metric == "perplexity" else (lambda v: f"{v:.2f}")
    head = [f"{L // 1024}k" if L % 1024 == 0 else str(L) for L in lengths]
    lines = [f"| method | {' | '.join(head)} |", "|---|" + "---|" * len(lengths)]
    for label, vals in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(vals[L]) if L in vals else "–" for L in lengths) + " |")
    return "\n".join(lines)


def fmt(v) -> str:
    """A metric value in a table cell: 3 decimals below 10, 3 significant digits above."""
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.3g}" if abs(v) >= 1000 else f"{v:.1f}"


def _flat(rec: dict) -> dict[str, object]:
    out = {f"{k}": v for k, v in rec["task"]["params"].items()}
    for comp, ps in rec["method"]["params"].items():
        out.update({f"{comp}.{k}": v for k, v in (ps or {}).items()})
    return out


def variant_labels(recs: list[dict]) -> list[str]:
    """Each record's method name plus the parameters that differ between records of that method."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_method[r["method"]["name"]].append(_flat(r))
    labels = []
    for r in recs:
        flats = by_method[r["method"]["name"]]
        mine = _flat(r)
        differ = sorted(k for k in mine if len({repr(f.get(k)) for f in flats}) > 1)
        bits = [f"{k.split('.', 1)[-1] if '.' in k else k}={mine[k]}" for k in differ]
        labels.append(r["method"]["name"] + (f" ({', '.join(bits)})" if bits else "") + generation_mark(r["model"]))
    return labels


def _over_seeds(values: list) -> str:
    """One cell for the runs of one configuration: the value, or mean ± sample sd over the seeds."""
    vals = [v for v in values if isinstance(v, (int, float))]
    if len(vals) < 2:
        return fmt(vals[0]) if vals else ""
    mean = sum(vals) / len(vals)
    sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    return f"{fmt(mean)} ± {fmt(sd)}"


def records_table(recs: list[dict], metrics: list[str] | None = None) -> str:
    """One row per configuration: the method (with the parameters that tell its records apart), the
    given metrics (default: each record's main metric) and whether the number is calibrated. Runs of
    one configuration that differ only in their seed share a row: mean ± sd over the seeds, and a
    `seeds` column says how many (the spread is the seeds', never the configurations')."""
    rows = sorted(zip(variant_labels(recs), recs), key=lambda x: x[0])
    if metrics:
        groups: dict[tuple, list[tuple[str, dict]]] = {}
        for label, r in rows:  # the configuration: everything but the seed
            key = (label, json.dumps(r["task"].get("params"), sort_keys=True), model_key(r["model"]), r.get("limit"))
            groups.setdefault(key, []).append((label, r))
        seeded = any(len(g) > 1 for g in groups.values())
        head = ["method", *metrics, *(["seeds"] if seeded else []), "calibrated"]
        body = [
            [
                g[0][0],
                *(_over_seeds([r["metrics"].get(m, {}).get("value") for _, r in g]) for m in metrics),
                *([str(len({r.get("seed") for _, r in g}))] if seeded else []),
                str(all(r["provenance"].get("calibrated", True) for _, r in g)).lower(),
            ]
            for g in groups.values()
        ]
    else:
        head = ["method", "main metric", "value", "n", "calibrated"]
        body = [
            [
                label,
                r["main_metric"],
                fmt(r["metrics"].get(r["main_metric"], {}).get("value")),
                str(r["metrics"].get(r["main_metric"], {}).get("n", "—")),
                str(r["provenance"].get("calibrated", True)).lower(),
            ]
            for label, r in rows
        ]
    return _md(head, body)


def runs_table(recs: list[dict], metric: str) -> str:
    """One row per record with where and how long it ran: device, threads, wall time and peak
    memory (the GPU allocator's peak on CUDA, else the cell's peak resident memory)."""
    body = []
    for label, r in sorted(zip(variant_labels(recs), recs), key=lambda x: x[0]):
        p = r["provenance"]
        if p.get("peak_gpu_mem_bytes"):
            mem = f"{p['peak_gpu_mem_bytes'] / 2**30:.1f} GiB (GPU)"
        elif p.get("max_rss_bytes"):
            mem = f"{p['max_rss_bytes'] / 2**30:.1f} GiB (resident)"
        else:
            mem = "—"
        body.append(
            [
                label,
                fmt(r["metrics"].get(metric, {}).get("value")),
                p.get("device", "—"),
                str(p.get("threads", "—")),
                f"{p['wall_time_s']:.1f} s",
                mem,
            ]
        )
    return _md(["method", metric, "device", "threads", "wall time", "peak memory"], body)


def _md(head: list[str], body: list[list[str]]) -> str:
    return "\n".join([f"| {' | '.join(head)} |", "|" + "---|" * len(head)] + [f"| {' | '.join(row)} |" for row in body])


def heatmaps(recs: list[dict], path: Path, title: str) -> Path:
    """One depth x length panel per method (needle grids), saved as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("heatmaps need matplotlib: pip install 'harness-eval[plots]'") from None
    cells: dict[str, dict[tuple[float, int], list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for rec in recs:
        for c in rec.get("details", {}).get("grid", []):
            acc = cells[rec["method"]["name"]][(round(c["depth"], 1), c["context_length"])]
            acc[0] += c["accuracy"] * c["n"]
            acc[1] += c["n"]
    if not cells:
        raise UserError("no needle grids (details.grid) in these records")
    methods = sorted(cells)
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, methods):
        depths = sorted({d for d, _ in cells[name]})
        lengths = sorted({L for _, L in cells[name]})
        grid = [
            [
                (cells[name][(d, L)][0] / cells[name][(d, L)][1]) if cells[name][(d, L)][1] else float("nan")
                for L in lengths
            ]
            for d in depths
        ]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(lengths)), [f"{L // 1024}k" if L >= 1024 else str(L) for L in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0f}%" for d in depths], fontsize=6)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
