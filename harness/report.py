"""`harness report`: tables (and needle heatmaps) of a task's records across methods and context
lengths, in Markdown for the docs site and papers. A pure reader of records; nothing is rerun.

A task that defines its own tables (`Task.report`, e.g. kv_compression's budgets) gets those.
Otherwise: one row per method (with the parameters that tell its records apart), one column per
context length. The value at a length comes from the record's per-length metric (`accuracy@4096`,
`perplexity@4096`) or, for needle, from its depth x length grid. Records of one configuration that
differ only in their seed form one cell, mean ± sd over the seeds, and a line under the table says
how many seeds the cells have (harness/seeds.py); when several configurations cover the same
(method, length), the one with more samples per seed wins. Cells from another device or torch
version than the table's most common are marked. Records without per-length values get one row
per configuration (`records_table`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness import records, seeds
from harness.errors import UserError

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


@dataclass
class Cell:
    """One table cell: the value over the seeds of one configuration, and the records behind it."""

    spread: seeds.Spread
    records: list[dict]

    @property
    def value(self) -> float:
        return self.spread.mean


def table(recs: list[dict], metric: str) -> tuple[list[int], dict[str, dict[int, Cell]]]:
    """Rows (a method with the parameters that tell its records apart, and the model when several)
    by context length. A cell holds the records of one configuration (context lengths aside) that
    differ only in their seed; where configurations of one row overlap at a length, the one with
    more samples per seed wins (then the one with more seeds)."""
    many_models = len(recs_models(recs)) > 1
    labels = variant_labels(recs, task_params=False)
    found: dict[tuple[str, int], dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for label, rec in zip(labels, recs):
        label += f" ({rec['model']['id']})" if many_models else ""
        key = seeds.config_key(rec, ignore_task=("context_length",))
        for L, (value, n) in per_length(rec, metric).items():
            runs = found[(label, L)][key]
            if rec.get("seed") not in runs or n > runs[rec.get("seed")][1]:  # one value per seed
                runs[rec.get("seed")] = (value, n, rec)
    rows: dict[str, dict[int, Cell]] = defaultdict(dict)
    for (label, L), configs in found.items():
        runs = max(configs.values(), key=lambda rs: (sum(n for _, n, _ in rs.values()) / len(rs), len(rs)))
        rows[label][L] = Cell(seeds.spread(v for v, _, _ in runs.values()), [r for _, _, r in runs.values()])
    lengths = sorted({L for r in rows.values() for L in r})
    return lengths, dict(sorted(rows.items()))


def recs_models(recs: list[dict]) -> set[str]:
    return {r["model"]["id"] for r in recs}


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
    cells = [c for vals in rows.values() for c in vals.values()]
    envs = seeds.Environments(r for c in cells for r in c.records)
    fmt = (lambda v: f"{v:.3g}" if v >= 100 else f"{v:.2f}") if metric == "perplexity" else (lambda v: f"{v:.2f}")
    head = [f"{L // 1024}k" if L % 1024 == 0 else str(L) for L in lengths]
    lines = [f"| method | {' | '.join(head)} |", "|---|" + "---|" * len(lengths)]
    for label, vals in rows.items():
        lines.append(
            f"| {label} | "
            + " | ".join(vals[L].spread.text(fmt) + envs.mark(vals[L].records) if L in vals else "–" for L in lengths)
            + " |"
        )
    used = [r.get("seed") for c in cells for r in c.records]
    return "\n".join(lines + seeds.notes(seeds.seeds_line([c.spread.n for c in cells], used), envs.legend()))


def fmt(v) -> str:
    """A metric value in a table cell: 3 decimals below 10, 3 significant digits above."""
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.3g}" if abs(v) >= 1000 else f"{v:.1f}"


def _flat(rec: dict, task_params: bool = True) -> dict[str, object]:
    out = {f"{k}": v for k, v in rec["task"]["params"].items()} if task_params else {}
    for comp, ps in rec["method"]["params"].items():
        out.update({f"{comp}.{k}": v for k, v in (ps or {}).items()})
    return out


def variant_labels(recs: list[dict], task_params: bool = True) -> list[str]:
    """Each record's method name plus the parameters that differ between records of that method
    (its task's too, unless task_params is False)."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_method[r["method"]["name"]].append(_flat(r, task_params))
    labels = []
    for r in recs:
        flats = by_method[r["method"]["name"]]
        mine = _flat(r, task_params)
        differ = sorted(k for k in mine if len({repr(f.get(k)) for f in flats}) > 1)
        bits = [f"{k.split('.', 1)[-1] if '.' in k else k}={mine[k]}" for k in differ]
        labels.append(r["method"]["name"] + (f" ({', '.join(bits)})" if bits else ""))
    return labels


def records_table(recs: list[dict], metrics: list[str]) -> str:
    """One row per configuration: the method (with the parameters that tell its configurations
    apart), the given metrics and whether the number is calibrated. Runs of one configuration that
    differ only in their seed share a row: mean ± sd over the seeds, and a `seeds` column says how
    many (the spread is the seeds', never the configurations'); rows from another device or torch
    version than the table's most common are marked."""
    label = dict(zip(map(id, recs), variant_labels(recs)))
    groups = sorted(seeds.group(recs), key=lambda g: label[id(g.records[0])])
    envs = seeds.Environments(recs)
    seeded = any(len(g.records) > 1 for g in groups)
    head = ["method", *metrics, *(["seeds"] if seeded else []), "calibrated"]
    body = []
    for g in groups:
        cells = [g.text(m, fmt, missing="") for m in metrics]
        body.append(
            [
                label[id(g.records[0])] + envs.mark(g.records),
                *cells,
                *([str(len(g.seeds))] if seeded else []),
                str(all(r["provenance"].get("calibrated", True) for r in g.records)).lower(),
            ]
        )
    note = seeds.seeds_line([len(g.seeds) for g in groups], [r.get("seed") for r in recs])
    return "\n".join([_md(head, body), *seeds.notes(note, envs.legend())])


def over_seeds(values: list, form=None) -> str:
    """One cell for the runs of one configuration: the value, or mean ± sample sd over the seeds."""
    s = seeds.spread(values)
    return s.text(form or fmt) if s else ""


def seed_groups(recs: list[dict]) -> list[tuple[str, list[dict]]]:
    """(label, records) per configuration (harness.seeds.group), sorted by variant_labels' label."""
    label = dict(zip(map(id, recs), variant_labels(recs)))
    return sorted(((label[id(g.records[0])], g.records) for g in seeds.group(recs)), key=lambda x: x[0])


def runs_table(recs: list[dict], metric: str) -> str:
    """One row per record with where and how long it ran: device, threads, wall time and peak
    memory (the GPU allocator's peak on CUDA, else the cell's peak resident memory); the seed joins
    the label when the records' seeds differ."""
    body = []
    seeded = len({r.get("seed") for r in recs}) > 1
    labels = [lab + (f" (seed {r.get('seed')})" if seeded else "") for lab, r in zip(variant_labels(recs), recs)]
    for label, r in sorted(zip(labels, recs), key=lambda x: x[0]):
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


def heatmap_cells(recs: list[dict]) -> dict[str, dict[tuple[float, int], list[float]]]:
    """{panel label: {(depth, length): [correct, n]}}: a panel per method and parameters, its
    records' (seeds') samples pooled."""
    cells: dict[str, dict[tuple[float, int], list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for label, rec in zip(variant_labels(recs, task_params=False), recs):
        for c in rec.get("details", {}).get("grid", []):
            acc = cells[label][(round(c["depth"], 1), c["context_length"])]
            acc[0] += c["accuracy"] * c["n"]
            acc[1] += c["n"]
    return cells


def heatmaps(recs: list[dict], path: Path, title: str) -> Path:
    """One depth x length panel per method and parameters (needle grids; a method's records with
    different parameters are different panels, its seeds pooled over their samples), saved as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("heatmaps need matplotlib: pip install 'harness-eval[plots]'") from None
    cells = heatmap_cells(recs)
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
