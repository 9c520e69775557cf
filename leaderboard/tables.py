"""The leaderboard's tables, computed from loaded runs (no Streamlit here, so the views are
testable and the benchmark times exactly what the overview computes).

Grouping: a row is a configuration — task (name, version, params, limit), method (name, params)
and model (id, weights), everything but the seed (loader.config_key). Runs of one configuration
that differ only in their seed become one row (mean, seeds = how many); two configurations of one
method (different budgets, factors, aggregations) stay two rows, labelled by the parameters that
tell them apart.

The overview's path (rankings, notes, win rates, CSV) is plain Python over lists of rows: pandas'
per-operation overhead cost more than the arithmetic for 30 small tables, and the overview then
needs no pandas at all (it is imported where a frame is shown: run detail, compare).

Uncertainty: every score carries n (the samples behind it) and a 95% interval, and a rank is grey
when its interval overlaps another row's (the order between them is not resolved). One run: a
Wilson interval for a mean of values in [0, 1] (unit fraction; conservative for any values in
[0, 1], exact in spirit for 0/1 outcomes, sensible at 0 and 1 and for small n), else value ± 1.96
stderr from the record; several seeds: the wider of the seeds' t-interval and the runs' own
sampling error. No interval ("—") when the record gives neither."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from harness.leaderboard.loader import Run, _num
from harness.leaderboard.schema import MetricInfo, Schema

ZOO_NOTE = (
    "zoo model: a tiny reference model trained by this project on its synthetic corpus — "
    "these numbers are for that model only, not for real LLMs"
)
FEW_SAMPLES = 30  # below this many samples per run a board says so next to its ranking
Z95 = 1.959963984540054
# two-sided 95% Student t quantiles for 1..30 degrees of freedom (beyond: a Cornish-Fisher series)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text) -> str:
    """Record text made inert for st.markdown-family calls (no links, images, HTML, emphasis or
    table breaks: every Markdown character escaped, line breaks as spaces)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\r", " ").replace("\n", " ")


def filter_runs(runs: list[Run], tasks=(), methods=(), families=(), models=()) -> list[Run]:
    return [
        r
        for r in runs
        if (not tasks or r.task in tasks)
        and (not methods or r.method in methods)
        and (not families or r.family in families)
        and (not models or r.model in models or r.record["model"]["id"] in models)  # an id: every zoo generation
    ]


# -- labels ----------------------------------------------------------------------------------------
def _short(value, limit: int = 40) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def config_labels(runs: list[Run]) -> dict[str, str]:
    """config id -> its method name plus the method parameters that differ between that method's
    configurations among `runs` ("yarn (factor=8)"); a method with one set of parameters is its
    name. (The task variant and model are the board's or the selector's own text; two
    configurations that would still read the same there get their id's start appended.)"""
    by_method: dict[str, dict[str, dict]] = defaultdict(dict)
    where: dict[str, tuple] = {}
    for r in runs:
        by_method[r.method].setdefault(r.config, r.params)
        where.setdefault(r.config, (getattr(r, "bench", ""), getattr(r, "model", "")))
    labels = {}
    for method, configs in by_method.items():
        keys = sorted({k for p in configs.values() for k in p})
        differ = [
            k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in configs.values()}) > 1
        ]
        for cid, p in configs.items():
            bits = ", ".join(f"{k}={_short(p.get(k, '—'))}" for k in differ)
            labels[cid] = f"{method} ({bits})" if bits else method
    seen = Counter((lab, where[cid]) for cid, lab in labels.items())  # same params, other weights or version
    return {cid: (f"{lab} #{cid[:6]}" if seen[(lab, where[cid])] > 1 else lab) for cid, lab in labels.items()}


def run_label(run: Run, labels: dict[str, str]) -> str:
    """A run as the run and compare selectors show it: variant, configuration, model, seed, id."""
    return f"{run.bench} · {labels.get(run.config, run.method)} · {run.model} · seed {run.seed} · {run.run_id[:8]}"


# -- intervals -------------------------------------------------------------------------------------
def t95(df: int) -> float:
    if df < 1:
        return math.inf
    if df <= len(_T95):
        return _T95[df - 1]
    z = Z95  # Cornish-Fisher expansion of the t quantile (error < 1e-4 beyond 30 df)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def wilson(p: float, n: int) -> tuple[float, float]:
    z2 = Z95 * Z95
    d = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / d
    half = Z95 * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _n(m: dict) -> int | None:
    n = m.get("n")
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) and n >= 1 else None


def run_interval(run: Run, metric: str, info: MetricInfo) -> tuple[float, float] | None:
    m = run.metric(metric)
    v, se, n = _num(m.get("value")), _num(m.get("stderr")), _n(m)
    if v is None:
        return None
    if info.unit == "fraction" and 0.0 <= v <= 1.0 and n:
        return wilson(v, n)
    if se is not None and n and n > 1:
        return v - Z95 * se, v + Z95 * se
    return None


def group_interval(values: list[float], per_run: list) -> tuple[float, float] | None:
    """95% interval of the mean of a configuration's seeds."""
    k = len(values)
    if k == 1:
        return per_run[0]
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = t95(k - 1) * sd / math.sqrt(k)
    if all(iv is not None for iv in per_run):  # the runs' own sampling error of the mean
        half = max(half, math.sqrt(sum(((hi - lo) / 2) ** 2 for lo, hi in per_run)) / k)
    return mean - half, mean + half


# -- rankings --------------------------------------------------------------------------------------
COLUMNS = [
    "rank",
    "configuration",
    "method",
    "family",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "seeds",
    "calibrated",
    "resolved",
    "degenerate",
    "config",
    "params",
    "run_ids",
]


def ranked(runs: list[Run], schema: Schema, metric: str | None = None, labels: dict | None = None) -> list[dict]:
    """One benchmark's runs (same task variant and model), one row per configuration, best first.
    Seeds of a configuration are averaged (seeds = how many). A configuration that the schema
    declares degenerate on this metric, or whose records fail the metric's `unranked_below` bounds,
    is listed last, unranked, with the reason."""
    metric = metric or (runs[0].main_metric if runs else None) or ""
    labels = labels if labels is not None else config_labels(runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.config].append(r)
    info = _info(runs, metric, schema)
    rows = []
    for cid, rs in groups.items():
        rs.sort(key=lambda r: str(r.seed))
        vals, ivs, ns = [], [], []
        for r in rs:
            v = _num(r.metric(metric).get("value"))
            if v is not None:
                vals.append(v)
                ivs.append(run_interval(r, metric, info))
                ns.append(_n(r.metric(metric)))
        interval = group_interval(vals, ivs) if vals else None
        known = [n for n in ns if n]
        rows.append(
            {
                "rank": None,
                "configuration": labels.get(cid, rs[0].method),
                "method": rs[0].method,
                "family": rs[0].family,
                "value": sum(vals) / len(vals) if vals else None,
                "ci_low": interval[0] if interval else None,
                "ci_high": interval[1] if interval else None,
                "n": (min(known), max(known)) if known else None,
                "seeds": len(rs),
                "calibrated": all(r.calibrated for r in rs),
                "resolved": None,
                "degenerate": info.degenerate_for(rs[0].method) or info.unranked_for([r.record for r in rs]) or "",
                "config": cid,
                "params": rs[0].params,
                "run_ids": [r.run_id for r in rs],
            }
        )
    higher = info.direction == "higher"
    rows.sort(
        key=lambda row: (
            bool(row["degenerate"]),
            row["value"] is None,
            -(row["value"] or 0.0) if higher else (row["value"] or 0.0),
            row["configuration"],
        )
    )
    ranked_rows = [row for row in rows if row["value"] is not None and not row["degenerate"]]
    for i, row in enumerate(ranked_rows):
        row["rank"] = i + 1
        if row["ci_low"] is not None:
            row["resolved"] = not any(
                o is not row
                and o["ci_low"] is not None
                and row["ci_low"] <= o["ci_high"]
                and o["ci_low"] <= row["ci_high"]
                for o in ranked_rows
            )
    return rows


def _info(runs: list[Run], metric: str, schema: Schema) -> MetricInfo:
    """The metric's schema entry with the direction its records declare."""
    rec = next((r.metric(metric) for r in runs if r.metric(metric).get("direction")), None)
    if rec is None:
        rec = next((r.metric(metric) for r in runs if r.metric(metric)), {})
    return schema.metric(metric, rec, runs[0].task if runs else None)


@dataclass
class Board:
    """One overview block: a task variant on a model, the metric it is ranked by and the
    configurations ranked on it."""

    bench: str
    task: str
    model: str
    zoo: bool
    model_label: str
    metric: str
    metric_display: str
    direction: str
    table: list[dict]  # ranked rows (COLUMNS), best first
    info: MetricInfo | None = None
    notes: list[str] = field(default_factory=list)

    def fmt(self, value) -> str:
        if value is None or value != value:
            return ""
        return self.info.fmt(value) if self.info is not None else f"{value:.4g}"

    def header(self) -> str:
        """The line under the board's title: model, the metric with its meaning and direction."""
        zoo = " (zoo model)" if self.zoo else ""
        return f"model {self.model}{zoo} · ranked by {self.info.meaning() if self.info else self.metric}"

    def markdown(self) -> str:
        """The ranking as one escaped Markdown table (a single element: fast to paint, and plain
        searchable page text). Grey ranks: intervals overlap another row's."""
        has_note = any(row["degenerate"] for row in self.table)
        head = ["rank", "configuration", "family", self.metric_display, "95% CI", "n", "seeds", "calibrated"]
        head += ["note"] if has_note else []
        lines = ["| " + " | ".join(md(h) for h in head) + " |", "|" + "---|" * len(head)]
        for row in self.table:
            if row["rank"] is None:
                rank = "—"
            elif row["resolved"] is False:
                rank = f":gray[{row['rank']}]"
            else:
                rank = str(row["rank"])
            ci = f"[{self.fmt(row['ci_low'])}, {self.fmt(row['ci_high'])}]" if row["ci_low"] is not None else "—"
            n = row["n"]
            n = "—" if n is None else (str(n[0]) if n[0] == n[1] else f"{n[0]}–{n[1]}")
            cells = [
                rank,
                md(row["configuration"]),
                md(row["family"]),
                md(self.fmt(row["value"])),
                md(ci),
                md(n),
                str(row["seeds"]),
                "yes" if row["calibrated"] else "no",
            ]
            cells += ["not ranked (see the notes)" if row["degenerate"] else ""] if has_note else []
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def board_notes(board: Board) -> list[str]:
    """What a reader must know to read the ranking (plain text; the app escapes it)."""
    t = board.table
    notes = []
    if any(r["resolved"] is False for r in t):  # None: untested (no interval), not False
        notes.append(
            "grey rank: its 95% interval overlaps another configuration's, so the order between them "
            "is not resolved by these samples"
        )
    if any(r["ci_low"] is None and r["value"] is not None for r in t):
        notes.append("95% CI —: the record gives no standard error, so that rank is untested")
    ns = [r["n"] for r in t if r["n"] is not None]
    if ns and min(n[0] for n in ns) < FEW_SAMPLES:
        lo, hi = min(n[0] for n in ns), max(n[1] for n in ns)
        shown = f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"
        notes.append(f"few samples: {shown} per configuration; the intervals are wide and the order is fragile")
    missing = [row["configuration"] for row in t if row["value"] is None and not row["degenerate"]]
    if missing:
        notes.append(f"not ranked, their records hold no {board.metric}: {', '.join(missing)}")
    for row in t:
        if row["degenerate"]:
            notes.append(f"{row['configuration']} is not ranked on {board.metric}: {row['degenerate']}")
    if not all(r["calibrated"] for r in t):
        notes.append("uncalibrated: some scorers ran with random-init or proxy weights (calibrated = no)")
    return notes


def overview(runs: list[Run], schema: Schema, metric: str | None = None) -> list[Board]:
    """A board per task variant and model, ranked by `metric` (default: the main metric)."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.bench, r.model)].append(r)
    boards = []
    for (bench, model), rs in sorted(groups.items()):
        main = metric if metric and any(metric in r.record["metrics"] for r in rs) else None
        main = main or Counter(r.main_metric for r in rs).most_common(1)[0][0] or ""
        info = _info(rs, main, schema)
        board = Board(
            bench,
            rs[0].task,
            model,
            rs[0].zoo,
            rs[0].model_label,
            main,
            info.display + (f" ({info.unit})" if info.unit else ""),
            info.direction,
            ranked(rs, schema, main),
            info,
        )
        board.notes = board_notes(board)
        boards.append(board)
    return boards


def win_rates(boards: list[Board]) -> list[dict]:
    """HELM's mean win rate per method family: on every benchmark, a configuration's share of the
    other configurations of its family (and the baseline) that it beats (ties count half), averaged
    over the benchmarks where it ran. Degenerate baselines take no part. Rows sorted by family, then
    best first."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for b in boards:
        t = [r for r in b.table if r["rank"] is not None]
        for fam in {r["family"] for r in t} - {"baseline"}:
            sub = [r for r in t if r["family"] in (fam, "baseline")]
            if len(sub) < 2:
                continue
            values = [(r["configuration"], r["value"]) for r in sub]
            for config, v in values:
                others = [w for m, w in values if m != config]
                if not others:
                    continue
                wins = sum(
                    1.0 if (v > w if b.direction == "higher" else v < w) else 0.5 if v == w else 0.0 for w in others
                )
                acc[(fam, config)].append(wins / len(others))
    rows = [
        {"family": fam, "configuration": m, "mean win rate": sum(v) / len(v), "benchmarks": len(v)}
        for (fam, m), v in acc.items()
    ]
    return sorted(rows, key=lambda r: (r["family"], -r["mean win rate"], r["configuration"]))


def win_rates_markdown(rows: list[dict]) -> str:
    head = ["family", "configuration", "mean win rate", "benchmarks"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|"]
    lines += [
        f"| {md(r['family'])} | {md(r['configuration'])} | {r['mean win rate']:.3f} | {r['benchmarks']} |" for r in rows
    ]
    return "\n".join(lines)


# -- the CSV download ------------------------------------------------------------------------------
CSV_COLUMNS = [
    "task",
    "variant",
    "model",
    "zoo",
    "metric",
    "direction",
    "rank",
    "rank_resolved",
    "configuration",
    "method",
    "method_params",
    "family",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "seeds",
    "calibrated",
    "degenerate",
    "run_ids",
]


def _cell(value) -> str:
    """A CSV cell that a spreadsheet shows as text: record text starting with = + - @ or a control
    character gets a leading ' (CSV formula injection), numbers are written as they are."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def boards_csv(boards: list[Board]) -> str:
    """The filtered overview as CSV: one row per configuration per board, in page order."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for b in boards:
        for row in b.table:
            n = row["n"]
            n = None if n is None else (n[0] if n[0] == n[1] else f"{n[0]}-{n[1]}")
            params = "; ".join(
                f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                for k, v in row["params"].items()
            )
            w.writerow(
                [
                    _cell(v)
                    for v in (
                        b.task,
                        b.bench,
                        b.model,
                        b.zoo,
                        b.metric,
                        b.direction,
                        row["rank"],
                        row["resolved"],
                        row["configuration"],
                        row["method"],
                        params,
                        row["family"],
                        row["value"],
                        row["ci_low"],
                        row["ci_high"],
                        n,
                        row["seeds"],
                        row["calibrated"],
                        row["degenerate"],
                        " ".join(row["run_ids"]),
                    )
                ]
            )
    return out.getvalue()


# -- run detail -----------------------------------------------------------------------------------
def metrics_table(run: Run, schema: Schema):
    import pandas as pd

    rows = []
    for name, m in run.record["metrics"].items():
        info = schema.metric(name, m, run.task)
        rows.append(
            {
                "metric": info.display,
                "name": name,
                "value": _num(m.get("value")),
                "stderr": _num(m.get("stderr")),
                "n": m.get("n"),
                "unit": info.unit,
                "better": info.direction if info.declared else "?",
                "meaning": info.description,
            }
        )
    return pd.DataFrame(rows, columns=["metric", "name", "value", "stderr", "n", "unit", "better", "meaning"])


def flatten(obj, prefix="") -> list[tuple[str, str]]:
    """Nested provenance / config as (key path, text) rows for a plain table."""
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out or [(prefix, "{}")]
    if isinstance(obj, list) and obj and all(isinstance(x, (dict, list)) for x in obj):
        out = []
        for i, v in enumerate(obj):
            out += flatten(v, f"{prefix}[{i}]")
        return out
    return [(prefix, obj if isinstance(obj, str) else repr(obj) if obj is not None else "")]


def sample_frame(rows: list[dict]):
    """Per-sample rows as a table of scalars (lists and objects shown as their JSON text)."""
    import pandas as pd

    flat = [
        {
            k: (v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, ensure_ascii=False))
            for k, v in r.items()
        }
        for r in rows
    ]
    return pd.DataFrame(flat)


def filter_samples(frame, query: str):
    """Rows with `query` as a substring of any field."""
    if not query or not len(frame):
        return frame
    mask = frame.astype(str).apply(lambda col: col.str.contains(query, regex=False)).any(axis=1)
    return frame[mask]


# -- compare two configurations ----------------------------------------------------------------------
DIFF = "b − a"


@dataclass
class Comparison:
    metric: str
    field: str | None
    value_a: float | None
    value_b: float | None
    test: str | None
    p_value: float | None
    n_paired: int
    changed: object  # a pandas DataFrame: the samples whose values differ: id, seed, a, b, b − a, predictions
    note: str | None = None
    seeds: list = field(default_factory=list)  # the seeds the pairs come from
    pairing: str = ""  # how the samples were paired, in words
    diffs: list[float] = field(default_factory=list)  # b − a for every pair (zeros included)
    mean_diff: float | None = None
    diff_interval: tuple[float, float] | None = None

    @property
    def p_text(self) -> str:
        from harness.gate import p_text

        return p_text(self.test, self.p_value)


def _mean(runs: list[Run], metric: str) -> float | None:
    vals = [v for r in runs if (v := _num(r.metric(metric).get("value"))) is not None]
    return sum(vals) / len(vals) if vals else None


def compare(a: Run | list[Run], b: Run | list[Run], samples_a, samples_b, metric: str) -> Comparison:
    """Pair two configurations' samples and test the difference with the gate's paired tests
    (exact McNemar for 0/1 values, paired bootstrap otherwise). `a` and `b` are a run each or a
    configuration's runs (its seeds); samples_x is the list of rows (one run) or a mapping run id ->
    rows. Pairs are (seed, sample id) over the seeds both ran; two single runs with different seeds
    pair on the sample id alone (said so in `pairing`)."""
    import pandas as pd

    runs_a, runs_b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    rows_a = samples_a if isinstance(samples_a, dict) else {runs_a[0].run_id: samples_a}
    rows_b = samples_b if isinstance(samples_b, dict) else {runs_b[0].run_id: samples_b}
    field_name = next((f for r in runs_a + runs_b if isinstance(f := r.metric(metric).get("sample_field"), str)), None)
    va, vb = _mean(runs_a, metric), _mean(runs_b, metric)
    empty = pd.DataFrame(columns=["id", "seed", "a", "b", DIFF, "prediction a", "prediction b"])
    if field_name is None:
        return Comparison(
            metric,
            None,
            va,
            vb,
            None,
            None,
            0,
            empty,
            f"metric {metric} names no per-sample field, so no paired test is possible",
        )
    seeds_a = {r.seed: r for r in runs_a}
    seeds_b = {r.seed: r for r in runs_b}
    common = sorted(set(seeds_a) & set(seeds_b), key=str)
    if common:
        plan = [(s, seeds_a[s], seeds_b[s]) for s in common]
        pairing = f"seed{'s' if len(common) > 1 else ''} {', '.join(map(str, common))}"
    else:
        ra, rb = runs_a[0], runs_b[0]
        plan = [(f"{ra.seed}/{rb.seed}", ra, rb)]
        pairing = f"different seeds: A seed {ra.seed} against B seed {rb.seed}, paired on the sample id"
    ids, x, y, pa, pb, seeds = [], [], [], [], [], []
    for seed, ra, rb in plan:
        # each run's own per-sample field: a derived metric (kv_compression's needle accuracy at equal
        # memory) reads another budget's row in each configuration (0.25 for one, native for another)
        fa, fb = (f if isinstance(f := r.metric(metric).get("sample_field"), str) else field_name for r in (ra, rb))
        xa = {s.get("id"): s for s in rows_a.get(ra.run_id, []) if _num(s.get(fa)) is not None}
        xb = {s.get("id"): s for s in rows_b.get(rb.run_id, []) if _num(s.get(fb)) is not None}
        for i in xa:
            if i in xb and isinstance(i, (str, int)):
                ids.append(i)
                seeds.append(seed)
                x.append(float(xa[i][fa]))
                y.append(float(xb[i][fb]))
                pa.append(str(xa[i].get("prediction", "")))
                pb.append(str(xb[i].get("prediction", "")))
    if not ids:
        return Comparison(
            metric,
            field_name,
            va,
            vb,
            None,
            None,
            0,
            empty,
            "the two configurations share no sample ids with a value for this metric",
        )
    from harness.gate import paired_test

    test, p = paired_test(x, y)
    d = [v - u for u, v in zip(x, y)]
    mean_d = sum(d) / len(d)
    half = Z95 * math.sqrt(sum((v - mean_d) ** 2 for v in d) / (len(d) - 1) / len(d)) if len(d) > 1 else None
    changed = pd.DataFrame(
        [
            {"id": str(i), "seed": str(s), "a": u, "b": v, DIFF: v - u, "prediction a": p1, "prediction b": p2}
            for i, s, u, v, p1, p2 in zip(ids, seeds, x, y, pa, pb)
            if u != v
        ],
        columns=list(empty.columns),
    )
    if len(changed):
        changed = changed.reindex(changed[DIFF].abs().sort_values(ascending=False, kind="stable").index)
    return Comparison(
        metric,
        field_name,
        va,
        vb,
        test,
        p,
        len(ids),
        changed.reset_index(drop=True),
        None,
        common,
        pairing,
        d,
        mean_d,
        (mean_d - half, mean_d + half) if half is not None else None,
    )
