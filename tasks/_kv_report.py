"""kv_compression's `harness report` tables: one table per context length (and rank_bytes), one row
per configuration (method and its parameters; the seeds of a configuration share the row), ranked
by the needle accuracy at equal KV memory, with the row each number was read from.

Only the ranked number carries the seeds' spread (mean ± sample sd, and a seeds column); the
per-budget cells are means over the seeds, so the table stays readable. Version 1 records (main
metric: the mean over budgets, no ranked row) are listed unranked: they hold no equal-memory number."""

from __future__ import annotations

import statistics

from harness import report, seeds

COLUMNS = (  # (header, per-budget metric, format)
    ("kept fraction", "kept_fraction", "{:.2f}"),
    ("bytes fraction", "kv_bytes_fraction", "{:.2f}"),
    ("needle", "needle_accuracy", "{:.2f}"),
    ("needle (query-aware)", "needle_accuracy_query_aware", "{:.2f}"),
    ("ppl ratio", "ppl_ratio", "{:.2f}"),
    ("KL vs dense", "kl_vs_dense", "{:.3f}"),
)
MAIN = "needle_accuracy_at_memory"


def _mean(recs: list[dict], key: str) -> float | None:
    vals = [r["metrics"][key]["value"] for r in recs if key in r["metrics"]]
    return sum(vals) / len(vals) if vals else None


def _cell(recs: list[dict], key: str, form: str) -> str:
    v = _mean(recs, key)
    return "–" if v is None else form.format(v)


def _ranked_row(recs: list[dict], rank_bytes) -> str:
    """Which row the ranked number was read from, or why there is none."""
    rows = [r.get("details", {}).get("ranked_row") for r in recs]
    if all(r is None for r in rows):
        if rank_bytes is None:
            return f"none (task version {recs[0]['task'].get('version')})"
        return f"none within {rank_bytes:g}"
    shown = {f"{r['budget']} ({r['kv_bytes_fraction']:.2f} of the bytes)" for r in rows if r}
    return " / ".join(sorted(shown))


def table(recs: list[dict], n: int, rank_bytes, envs: seeds.Environments) -> list[str]:
    groups = report.seed_groups(recs)
    models = {r["model"]["id"] for r in recs}
    means = {i: _mean(g, MAIN) for i, (_, g) in enumerate(groups)}
    ranked = sorted((i for i in means if means[i] is not None), key=lambda i: (-means[i], groups[i][0]))
    order = ranked + [i for i in range(len(groups)) if means[i] is None]
    title = (
        f"ranked at equal KV memory: at most {rank_bytes:g} of the dense cache's bytes"
        if rank_bytes is not None
        else "task version 1 records: no equal-memory number, unranked"
    )
    out = [
        f"**{n} tokens** ({title})",
        "",
        "| rank | method | seeds | needle at equal memory | ranked row | budgets | "
        + " | ".join(c for c, _, _ in COLUMNS)
        + " | decode ms/token (÷ dense) |",
        "|---" * (len(COLUMNS) + 7) + "|",
    ]
    for i in order:
        label, g = groups[i]
        label = f"`{label}`" + (f" ({g[0]['model']['id']})" if len(models) > 1 else "") + envs.mark(g)
        rank = str(1 + sum(means[j] > means[i] for j in ranked)) if means[i] is not None else "—"
        # a dense-only record (baseline, or cla, whose saving is its model's layout) shows its dense row
        budgets = [b for b in g[0]["details"]["budgets"] if b != "dense"] or ["dense"]
        cells = [" / ".join(_cell(g, f"{key}@{b}", form) for b in budgets) for _, key, form in COLUMNS]
        ratio = " / ".join(_cell(g, f"decode_time_ratio@{n}@{b}", "{:.2f}") for b in budgets)
        main = report.over_seeds([r["metrics"].get(MAIN, {}).get("value") for r in g]) or "—"
        seeds = len({r.get("seed") for r in g})
        out.append(
            f"| {rank} | {label} | {seeds} | {main} | {_ranked_row(g, rank_bytes)} | {' / '.join(budgets)} | "
            + " | ".join(cells)
            + f" | {ratio} |"
        )
    needle = statistics.median(r["metrics"]["needle_accuracy@dense"]["value"] for r in recs)
    # absolute numbers that compare across models (byte fractions and ratios are each model's own)
    absolute = [
        form.format(statistics.median(vals))
        for key, form in (("kv_bytes_per_token@dense", "{:.0f} KV bytes/token"), ("nll@dense", "nll {:.3f}"))
        if (vals := [r["metrics"][key]["value"] for r in recs if key in r["metrics"]])
    ]
    dense_ms = [
        r["metrics"][f"decode_ms_per_token@{n}@dense"]["value"]
        for r in recs
        if f"decode_ms_per_token@{n}@dense" in r["metrics"]
    ]
    out += [
        "",
        "Ranked by the needle accuracy of the row with the most KV bytes up to the bound (its budget and "
        "byte fraction under *ranked row*; mean ± sd over the seeds where there are several); rows "
        "without one are unranked (—). Per-budget cells are means over the seeds.",
        "",
        f"dense (median over the records): needle {needle:.2f}"
        + "".join(f", {a}" for a in absolute)
        + (f", ms/token {statistics.median(dense_ms):.1f}" if dense_ms else ""),
        "",
    ]
    return out


def markdown(recs: list[dict]) -> str:
    """One table per (context length, rank_bytes); rank_bytes is None for version 1 records."""
    tables: dict[tuple, list[dict]] = {}
    for rec in recs:
        params = rec["task"]["params"]
        tables.setdefault((int(params["context_length"]), params.get("rank_bytes")), []).append(rec)
    out, envs = [], seeds.Environments(recs)  # rows from another device or torch version are marked
    for n, rank_bytes in sorted(tables, key=lambda k: (k[0], k[1] is None, k[1] or 0)):
        out += table(tables[(n, rank_bytes)], n, rank_bytes, envs)
    note = seeds.seeds_line([len(g.seeds) for g in seeds.group(recs)], [r.get("seed") for r in recs])
    return "\n".join(["\n".join(out).rstrip(), *seeds.notes(note, envs.legend())])
