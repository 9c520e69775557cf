"""Per-task plots, built from record fields only. Each builder takes the runs of one task and
returns (chart or None, note): a record that lacks the fields a plot needs is left out, and a plot
with no usable record returns None and a note saying what it looked for, so the app shows the note
instead of failing. Builders are keyed by name; schema.yaml lists which plots a task gets, and
`plots_for` falls back to detecting them from the records' fields."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from harness.leaderboard.loader import Run, _num
from harness.leaderboard.schema import Schema, split_numbered


def _label(run: Run) -> str:
    return f"{run.method} (seed {run.seed})" if run.seed not in (0, None) else run.method


# -- needle: accuracy over context length x depth -------------------------------------------
def needle_heatmap(runs: list[Run], schema: Schema):
    rows = []
    for run in runs:
        grid = (run.record.get("details") or {}).get("grid")
        if not isinstance(grid, list):
            continue
        for cell in grid:
            if not isinstance(cell, dict):
                continue
            length, depth, acc = _num(cell.get("context_length")), _num(cell.get("depth")), _num(cell.get("accuracy"))
            if None not in (length, depth, acc):
                rows.append(
                    {
                        "method": _label(run),
                        "context_length": int(length),
                        "depth %": round(depth, 1),
                        "accuracy": acc,
                        "n": cell.get("n"),
                    }
                )
    if not rows:
        return None, "no record has details.grid rows with context_length, depth and accuracy"
    df = pd.DataFrame(rows)
    chart = (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("context_length:O", title="context length (tokens)"),
            y=alt.Y("depth %:O", sort="descending", title="needle depth (%)"),
            color=alt.Color("accuracy:Q", scale=alt.Scale(domain=[0, 1], scheme="redyellowgreen")),
            tooltip=["method", "context_length", "depth %", "accuracy", "n"],
        )
        .properties(width=150, height=160)
        .facet(facet=alt.Facet("method:N", title=None), columns=4)
    )
    return chart, None


# -- any metric family named base@<number>: a line per method over the number ---------------
def _numbered_rows(runs: list[Run], schema: Schema, bases=None):
    rows = []
    for run in runs:
        for name, m in run.record["metrics"].items():
            split = split_numbered(name)
            value = _num(m.get("value")) if isinstance(m, dict) else None
            if split is None or value is None or (bases and split[0] not in bases):
                continue
            rows.append(
                {"method": _label(run), "metric": schema.metric(split[0], m).display, "N": split[1], "value": value}
            )
    return rows


def by_number(runs: list[Run], schema: Schema):
    rows = _numbered_rows(runs, schema)
    if not rows:
        return None, "no metric named <metric>@<number> (e.g. accuracy@1024) in these records"
    df = pd.DataFrame(rows)
    chart = (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X("N:Q", scale=alt.Scale(type="log", base=2), title="N (context length, samples, ...)"),
            y=alt.Y("value:Q"),
            color="method:N",
            tooltip=["method", "metric", "N", "value"],
        )
        .properties(width=260, height=200)
        .facet(facet=alt.Facet("metric:N", title=None), columns=3)
    )
    return chart, None


# -- best-of-N (math_prm_bon): accuracy@N per method, majority / pass@N as references --------
BON_BASES = ("accuracy", "majority", "weighted_majority", "pass")


def best_of_n(runs: list[Run], schema: Schema):
    rows = _numbered_rows(runs, schema, bases=BON_BASES)
    if not rows:
        return None, "no accuracy@N / majority@N / pass@N metrics in these records"
    df = pd.DataFrame(rows)
    df["curve"] = [
        m if metric.startswith("Accuracy") else f"{metric.split(' @')[0]} ({m})"
        for m, metric in zip(df["method"], df["metric"])
    ]
    df = df.drop_duplicates(["curve", "N"])
    chart = (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X("N:Q", scale=alt.Scale(type="log", base=2), title="N (solutions per problem)"),
            y=alt.Y("value:Q", title="accuracy"),
            color="curve:N",
            strokeDash=alt.StrokeDash("metric:N", title="selection"),
            tooltip=["curve", "metric", "N", "value"],
        )
        .properties(width=560, height=320)
    )
    return chart, None


# -- kv_compression: quality versus kept fraction, with each method's Pareto front -----------
KV_QUALITY = ("needle_accuracy", "needle_accuracy_query_aware", "ppl_ratio", "kl_vs_dense", "accuracy")


def _kv_points(run: Run):
    """Rows with kept_fraction and quality fields: from any details table, else the metrics."""
    details = run.record.get("details") or {}
    for value in details.values():
        if (
            isinstance(value, list)
            and value
            and all(isinstance(r, dict) for r in value)
            and any("kept_fraction" in r for r in value)
        ):
            for r in value:
                yield r
            return
    flat = {k: (m.get("value") if isinstance(m, dict) else None) for k, m in run.record["metrics"].items()}
    if "kept_fraction" in flat:
        yield flat


def _pareto(points: list[tuple[float, float]], higher: bool) -> list[tuple[float, float]]:
    """Points not dominated by one that keeps no more and scores at least as well."""
    front, best = [], -math.inf
    for kept, q in sorted(points, key=lambda p: (p[0], -p[1] if higher else p[1])):
        score = q if higher else -q
        if score > best:
            front.append((kept, q))
            best = score
    return front


def kv_pareto(runs: list[Run], schema: Schema):
    rows = []
    for run in runs:
        for point in _kv_points(run):
            kept = _num(point.get("kept_fraction"))
            for q in KV_QUALITY:
                value = _num(point.get(q))
                if kept is not None and value is not None:
                    rows.append(
                        {
                            "method": _label(run),
                            "quality metric": q,
                            "kept_fraction": kept,
                            "quality": value,
                            "budget": point.get("budget"),
                        }
                    )
    if not rows:
        return None, (
            "no kept_fraction with a quality field (needle_accuracy, ppl_ratio, kl_vs_dense) "
            "in details tables or metrics"
        )
    df = pd.DataFrame(rows)
    df["on_front"] = False
    for (method, q), g in df.groupby(["method", "quality metric"]):
        front = set(_pareto(list(zip(g["kept_fraction"], g["quality"])), schema.metric(q).direction == "higher"))
        df.loc[g.index, "on_front"] = [(k, v) in front for k, v in zip(g["kept_fraction"], g["quality"])]
    base = alt.Chart()
    points = base.mark_point(filled=True, size=60).encode(
        x=alt.X("kept_fraction:Q", title="kept fraction of the KV cache"),
        y=alt.Y("quality:Q"),
        color="method:N",
        tooltip=["method", "quality metric", "budget", "kept_fraction", "quality"],
    )
    line = (
        base.transform_filter("datum.on_front")
        .mark_line()
        .encode(  # each method's Pareto front
            x="kept_fraction:Q", y="quality:Q", color="method:N", order="kept_fraction:Q"
        )
    )
    chart = (
        alt.layer(points, line, data=df)
        .properties(width=300, height=220)
        .facet(facet=alt.Facet("quality metric:N", title=None), columns=2)
    )
    return chart, None


# -- spec_acceptance: tau and speedup bars per method ------------------------------------------
SPEC_METRICS = ("tau", "speedup", "acceptance_rate")


def spec_bars(runs: list[Run], schema: Schema):
    rows = []
    for run in runs:
        params = run.record["task"].get("params") or {}
        temp = params.get("temperature") if isinstance(params, dict) else None
        for name, m in run.record["metrics"].items():
            base = name.split("@")[0]
            value = _num(m.get("value")) if isinstance(m, dict) else None
            if base in SPEC_METRICS and value is not None:
                label = name if temp is None else f"{name} (T={temp})"
                rows.append(
                    {"method": _label(run), "metric": schema.metric(base, m).display, "setting": label, "value": value}
                )
    if not rows:
        return None, "no tau / speedup / acceptance_rate metrics in these records"
    df = pd.DataFrame(rows)
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("method:N", title=None),
            y=alt.Y("value:Q"),
            color="setting:N",
            xOffset="setting:N",
            tooltip=["method", "setting", "value"],
        )
        .properties(width=320, height=220)
        .facet(facet=alt.Facet("metric:N", title=None), columns=2)
    )
    return chart, None


# -- vbench: a radar of dimension scores per method --------------------------------------------
def _vbench_scores(run: Run) -> dict[str, float]:
    """vbench_<dim> records give one dimension (their main metric); an aggregate record may carry
    a details.dimensions mapping or one metric per dimension."""
    rec = run.record
    dims = (rec.get("details") or {}).get("dimensions")
    if isinstance(dims, dict):
        scores = {k: _num(v.get("value") if isinstance(v, dict) else v) for k, v in dims.items()}
        return {k: v for k, v in scores.items() if v is not None}
    if run.task.startswith("vbench_") and run.main_value is not None:
        return {run.task.removeprefix("vbench_"): run.main_value}
    if run.task != "vbench":
        return {}
    return {
        k: v
        for k, m in rec["metrics"].items()
        if k not in ("total", "quality", "semantic") and (v := _num(m.get("value"))) is not None
    }


def vbench_radar(runs: list[Run], schema: Schema):
    scores: dict[str, dict[str, float]] = {}
    for run in runs:
        scores.setdefault(_label(run), {}).update(_vbench_scores(run))
    dims = sorted({d for s in scores.values() for d in s})
    if len(dims) < 3:
        return None, f"a radar needs at least 3 VBench dimensions; these records give {len(dims)}"
    rows, spokes = [], []
    for i, d in enumerate(dims):
        angle = 2 * math.pi * i / len(dims)
        spokes += [
            {"dim": d, "x": 0.0, "y": 0.0, "o": 0},
            {"dim": d, "x": math.sin(angle), "y": math.cos(angle), "o": 1},
        ]
    for method, s in scores.items():
        pts = [(d, i) for i, d in enumerate(dims) if d in s]
        for order, (d, i) in enumerate(pts + pts[:1]):  # close the polygon
            angle, r = 2 * math.pi * i / len(dims), max(0.0, min(1.0, s[d]))
            rows.append(
                {
                    "method": method,
                    "dimension": d,
                    "score": s[d],
                    "o": order,
                    "x": r * math.sin(angle),
                    "y": r * math.cos(angle),
                }
            )
    axis = dict(axis=None, scale=alt.Scale(domain=[-1.15, 1.15]))
    spoke = (
        alt.Chart(pd.DataFrame(spokes))
        .mark_line(color="#bbb")
        .encode(x=alt.X("x:Q", **axis), y=alt.Y("y:Q", **axis), detail="dim:N", order="o:Q")
    )
    labels = (
        alt.Chart(pd.DataFrame([s for s in spokes if s["o"] == 1]))
        .mark_text(dy=-6)
        .encode(x=alt.X("x:Q", **axis), y=alt.Y("y:Q", **axis), text="dim:N")
    )
    poly = (
        alt.Chart(pd.DataFrame(rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("x:Q", **axis),
            y=alt.Y("y:Q", **axis),
            color="method:N",
            order="o:Q",
            tooltip=["method", "dimension", "score"],
        )
    )
    return alt.layer(spoke, labels, poly).properties(width=420, height=420), None


BUILDERS = {
    "needle_heatmap": needle_heatmap,
    "by_number": by_number,
    "best_of_n": best_of_n,
    "kv_pareto": kv_pareto,
    "spec_bars": spec_bars,
    "vbench_radar": vbench_radar,
}
TITLES = {
    "needle_heatmap": "Needle accuracy by context length and depth",
    "by_number": "Metrics by number (context length, N, ...)",
    "best_of_n": "Best-of-N accuracy versus N",
    "kv_pareto": "Quality versus kept KV fraction",
    "spec_bars": "Speculative decoding: τ and speedup",
    "vbench_radar": "VBench dimensions",
}


def plots_for(task: str, runs: list[Run], schema: Schema) -> list[str]:
    """The schema's plots for the task, else those whose fields the records have."""
    listed = [p for p in schema.task(task).get("plots") or [] if p in BUILDERS]
    if listed:
        return listed
    found = []
    if any(isinstance((r.record.get("details") or {}).get("grid"), list) for r in runs):
        found.append("needle_heatmap")
    if any(split_numbered(k) for r in runs for k in r.record["metrics"]):
        found.append("by_number")
    return found
