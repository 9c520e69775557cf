"""Per-task plots, built from record fields only. Each builder takes the runs of one task and
returns a Plot: the chart (or None and a note saying what it looked for, so the app shows the note
instead of failing), the metrics it draws (the app writes their one-line meaning and direction
under the chart) and whether its panels have their own y-axes. Builders are keyed by name;
schema.yaml lists which plots a task gets, and `plots_for` falls back to detecting them from the
records' fields.

Lines and marks are per method configuration (method + the parameters that tell its
configurations apart; seeds and task variants pooled), in a palette that stays distinct for many
methods: 10 colours up to 10 methods, 20 up to 20, then each colour with a different marker shape
(every configuration a distinct colour-and-marker pair), in a legend that lists every entry in
full (Vega's default drops entries after 30 and cuts labels); clicking a legend entry highlights
that configuration. Faceted charts whose panels show different metrics give each panel its own
y-axis, and say so."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import NamedTuple

import altair as alt
import pandas as pd

from harness.leaderboard.loader import Run, _num
from harness.leaderboard.schema import Schema, split_numbered
from harness.leaderboard.tables import ZOO_NOTE, config_labels

TABLEAU10 = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]  # fmt: skip
TABLEAU20 = ["#4e79a7", "#a0cbe8", "#f28e2b", "#ffbe7d", "#59a14f", "#8cd17d", "#b6992d", "#f1ce63", "#499894", "#86bcb6",
             "#e15759", "#ff9d9a", "#79706e", "#bab0ac", "#d37295", "#fabfd2", "#b07aa1", "#d4a6c8", "#9d7660", "#d7b5a6"]  # fmt: skip
SHAPES = ["circle", "square", "triangle-up", "diamond", "cross", "triangle-down", "triangle-left", "triangle-right"]
INDEPENDENT_NOTE = "each panel has its own y-axis (its metric has its own unit and range)"
FIELD = "configuration"


# Streamlit fits an unfaceted chart's whole drawing, legend included, into its width and height
# ("fit"): a legend taller than the plot is cut. "pad" keeps the chart's own size and grows the
# drawing around the legend, as Streamlit already does for faceted charts.
PAD = alt.AutoSizeParams(type="pad", contains="padding")


class Plot(NamedTuple):
    chart: object | None
    note: str | None
    metrics: list = []  # (metric name, a record's metric dict) drawn, for the caption
    independent: bool = False  # panels with their own y-axes


def method_key(run: Run) -> str:
    """A method configuration across task variants and seeds: name and parameters."""
    return json.dumps([run.method, run.params], sort_keys=True, default=str)


def labels_for(runs: list[Run]) -> dict[int, str]:
    """id(run) -> its method configuration's label, pooled over task variants and seeds."""
    by_key = config_labels([_Keyed(r) for r in runs])
    return {id(r): by_key[method_key(r)] for r in runs}


class _Keyed:
    """A run seen through its method configuration (labels pooled over task variants)."""

    def __init__(self, run: Run):
        self.method, self.params, self.config = run.method, run.params, method_key(run)


def palette(domain: list[str], field: str = FIELD, title: str | None = "configuration"):
    """Colour and shape encodings (explicit domain and ranges: every entry a distinct pair), the
    legend listing every entry in full, and a legend-bound selection that highlights one entry."""
    colours = TABLEAU10 if len(domain) <= 10 else TABLEAU20
    legend = alt.Legend(symbolLimit=0, labelLimit=400, columns=1 if len(domain) <= 20 else 2, title=title)
    color = alt.Color(
        f"{field}:N",
        scale=alt.Scale(domain=domain, range=[colours[i % len(colours)] for i in range(len(domain))]),
        legend=legend,
    )
    shape = alt.Shape(
        f"{field}:N",
        scale=alt.Scale(domain=domain, range=[SHAPES[(i // len(colours)) % len(SHAPES)] for i in range(len(domain))]),
        legend=legend,
    )
    pick = alt.selection_point(name="pick", fields=[field], bind="legend")
    opacity = alt.condition(pick, alt.value(1.0), alt.value(0.12))
    return color, shape, pick, opacity


def _rec_metric(runs: list[Run], name: str) -> dict:
    return next((r.metric(name) for r in runs if r.metric(name)), {})


# -- needle: accuracy over context length x depth, one panel per method configuration --------------
def needle_heatmap(runs: list[Run], schema: Schema) -> Plot:
    labels = labels_for(runs)
    cells: dict[tuple, list] = defaultdict(lambda: [0.0, 0.0, 0])  # sum of acc*n, sum of n, runs
    for run in runs:
        grid = (run.record.get("details") or {}).get("grid")
        if not isinstance(grid, list):
            continue
        for cell in grid:
            if not isinstance(cell, dict):
                continue
            length, depth, acc = _num(cell.get("context_length")), _num(cell.get("depth")), _num(cell.get("accuracy"))
            if None in (length, depth, acc):
                continue
            n = _num(cell.get("n"))
            w = n if n and n > 0 else 1.0
            c = cells[(labels[id(run)], int(length), round(depth, 1))]
            c[0] += acc * w
            c[1] += w
            c[2] += 1
    if not cells:
        return Plot(None, "no record has details.grid rows with context_length, depth and accuracy")
    df = pd.DataFrame(
        [
            {FIELD: k[0], "context_length": k[1], "depth %": k[2], "accuracy": s / w, "needles": w, "runs": r}
            for k, (s, w, r) in sorted(cells.items())
        ]
    )
    chart = (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("context_length:O", title="context length (tokens)"),
            y=alt.Y("depth %:O", sort="descending", title="needle depth (%)"),
            color=alt.Color("accuracy:Q", scale=alt.Scale(domain=[0, 1], scheme="redyellowgreen"), title="accuracy"),
            tooltip=[FIELD, "context_length", "depth %", alt.Tooltip("accuracy:Q", format=".3f"), "needles", "runs"],
        )
        .properties(width=150, height=160)
        .facet(facet=alt.Facet(f"{FIELD}:N", title=None, header=alt.Header(labelLimit=300)), columns=4)
    )
    return Plot(chart, None, [("accuracy", _rec_metric(runs, "accuracy"))])


# -- any metric family named base@<number>: a line per method configuration over the number ---------
def _numbered_rows(runs: list[Run], schema: Schema, bases=None):
    labels = labels_for(runs)
    acc: dict[tuple, list[float]] = defaultdict(list)
    seen: dict[str, dict] = {}
    for run in runs:
        for name, m in run.record["metrics"].items():
            split = split_numbered(name)
            value = _num(m.get("value")) if isinstance(m, dict) else None
            if split is None or value is None or (bases and split[0] not in bases):
                continue
            seen.setdefault(f"{split[0]}@{{N}}", m)  # the family: its caption reads "… @ N"
            display = schema.metric(f"{split[0]}@{{N}}", m, run.task).display  # "Accuracy @ N"
            acc[(labels[id(run)], display, split[0], split[1])].append(value)
    rows = [
        {FIELD: k[0], "metric": k[1], "base": k[2], "N": k[3], "value": sum(v) / len(v), "runs": len(v)}
        for k, v in sorted(acc.items())
    ]
    return rows, seen


def _lines(df: pd.DataFrame, x: alt.X, y: alt.Y, tooltip: list, extra: dict | None = None):
    domain = sorted(df[FIELD].unique())
    color, shape, pick, opacity = palette(domain)
    base = alt.Chart().encode(x=x, y=y, color=color, opacity=opacity, tooltip=tooltip, **(extra or {}))
    return alt.layer(base.mark_line(), base.mark_point(filled=True, size=50).encode(shape=shape), data=df).add_params(
        pick
    )


def by_number(runs: list[Run], schema: Schema) -> Plot:
    rows, seen = _numbered_rows(runs, schema)
    if not rows:
        return Plot(None, "no metric named <metric>@<number> (e.g. accuracy@1024) in these records")
    df = pd.DataFrame(rows)
    several = df["metric"].nunique() > 1
    chart = _lines(
        df,
        alt.X("N:Q", scale=alt.Scale(type="log", base=2), title="N (context length, samples, ...)"),
        alt.Y("value:Q", title=None if several else df["metric"].iloc[0]),
        [FIELD, "metric", "N", alt.Tooltip("value:Q", format=".4g"), "runs"],
    ).properties(width=280 if several else 440, height=220 if several else 280)
    if several:
        chart = chart.facet(facet=alt.Facet("metric:N", title=None), columns=3).resolve_scale(y="independent")
    else:
        chart = chart.properties(autosize=PAD)
    return Plot(chart, None, list(seen.items()), several)


# -- best-of-N (math_prm_bon): accuracy@N per configuration, majority / pass@N as references ------------
BON_BASES = ("accuracy", "majority", "weighted_majority", "pass")
REFERENCES = ("majority", "weighted_majority", "pass")


def best_of_n(runs: list[Run], schema: Schema) -> Plot:
    rows, seen = _numbered_rows(runs, schema, bases=BON_BASES)
    if not rows:
        return Plot(None, "no accuracy@N / majority@N / pass@N metrics in these records")
    df = pd.DataFrame(rows)
    curves = df[df["base"] == "accuracy"]
    refs = df[df["base"].isin(REFERENCES)].groupby(["metric", "N"], as_index=False)["value"].mean()
    x = alt.X("N:Q", scale=alt.Scale(type="log", base=2), title="N (solutions per problem)")
    y = alt.Y("value:Q", title="accuracy")
    layers = []
    if len(curves):
        layers.append(_lines(curves, x, y, [FIELD, "N", alt.Tooltip("value:Q", format=".3f")]))
    if len(refs):
        layers.append(
            alt.Chart(refs)
            .mark_line(color="#777", strokeWidth=1.5)
            .encode(
                x=x,
                y=y,
                strokeDash=alt.StrokeDash("metric:N", title="reference (same solutions)"),
                tooltip=["metric", "N", alt.Tooltip("value:Q", format=".3f")],
            )
        )
    chart = alt.layer(*layers).resolve_scale(color="independent").properties(width=560, height=320, autosize=PAD)
    return Plot(chart, None, list(seen.items()))


# -- kv_compression: quality versus kept fraction, with each configuration's Pareto front ----------
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
            yield from value
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


def kv_pareto(runs: list[Run], schema: Schema) -> Plot:
    labels = labels_for(runs)
    rows = []
    for run in runs:
        for point in _kv_points(run):
            kept = _num(point.get("kept_fraction"))
            for q in KV_QUALITY:
                value = _num(point.get(q))
                if kept is not None and value is not None:
                    rows.append(
                        {
                            FIELD: labels[id(run)],
                            "quality metric": q,
                            "kept_fraction": kept,
                            "quality": value,
                            "budget": point.get("budget"),
                        }
                    )
    if not rows:
        return Plot(
            None,
            "no kept_fraction with a quality field (needle_accuracy, ppl_ratio, kl_vs_dense) in details tables or metrics",
        )
    df = (
        pd.DataFrame(rows)
        .groupby([FIELD, "quality metric", "kept_fraction", "budget"], dropna=False, as_index=False)["quality"]
        .mean()
    )
    df["on_front"] = False
    for (config, q), g in df.groupby([FIELD, "quality metric"]):
        higher = schema.metric(q, _rec_metric(runs, q)).direction == "higher"
        front = set(_pareto(list(zip(g["kept_fraction"], g["quality"])), higher))
        df.loc[g.index, "on_front"] = [(k, v) in front for k, v in zip(g["kept_fraction"], g["quality"])]
    domain = sorted(df[FIELD].unique())
    color, shape, pick, opacity = palette(domain)
    base = alt.Chart()
    points = base.mark_point(filled=True, size=60).encode(
        x=alt.X("kept_fraction:Q", title="kept fraction of the KV cache"),
        y=alt.Y("quality:Q", title=None),
        color=color,
        shape=shape,
        opacity=opacity,
        tooltip=[FIELD, "quality metric", "budget", "kept_fraction", alt.Tooltip("quality:Q", format=".4g")],
    )
    line = (
        base.transform_filter("datum.on_front")
        .mark_line()
        .encode(x="kept_fraction:Q", y="quality:Q", color=color, opacity=opacity, order="kept_fraction:Q")
    )
    several = df["quality metric"].nunique() > 1
    chart = alt.layer(points, line, data=df).add_params(pick).properties(width=300, height=220)
    chart = chart.facet(facet=alt.Facet("quality metric:N", title=None), columns=2)
    if several:
        chart = chart.resolve_scale(y="independent")
    drawn = sorted(set(df["quality metric"]))
    return Plot(
        chart,
        None,
        [("kept_fraction", _rec_metric(runs, "kept_fraction"))] + [(q, _rec_metric(runs, q)) for q in drawn],
        several,
    )


# -- spec_acceptance: tau and speedup bars per configuration ----------------------------------------
SPEC_METRICS = ("tau", "speedup", "acceptance_rate")


def spec_bars(runs: list[Run], schema: Schema) -> Plot:
    labels = labels_for(runs)
    acc: dict[tuple, list[float]] = defaultdict(list)
    seen: dict[str, dict] = {}
    for run in runs:
        params = run.record["task"].get("params") or {}
        temp = params.get("temperature") if isinstance(params, dict) else None
        for name, m in run.record["metrics"].items():
            base = name.split("@")[0]
            value = _num(m.get("value")) if isinstance(m, dict) else None
            if base in SPEC_METRICS and value is not None:
                seen.setdefault(base, m)
                setting = name if temp is None else f"{name} (T={temp})"
                acc[(labels[id(run)], schema.metric(base, m).display, setting)].append(value)
    if not acc:
        return Plot(None, "no tau / speedup / acceptance_rate metrics in these records")
    df = pd.DataFrame(
        [{FIELD: k[0], "metric": k[1], "setting": k[2], "value": sum(v) / len(v)} for k, v in sorted(acc.items())]
    )
    several = df["metric"].nunique() > 1
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X(f"{FIELD}:N", title=None, axis=alt.Axis(labelLimit=300)),
            y=alt.Y("value:Q", title=None),
            color=alt.Color("setting:N", legend=alt.Legend(symbolLimit=0, labelLimit=400)),
            xOffset="setting:N",
            tooltip=[FIELD, "setting", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(width=max(320, 18 * df[FIELD].nunique() * max(1, df["setting"].nunique() // 2)), height=220)
        .facet(facet=alt.Facet("metric:N", title=None), columns=2)
    )
    if several:
        chart = chart.resolve_scale(y="independent")
    return Plot(chart, None, list(seen.items()), several)


# -- vbench: a radar of dimension scores per configuration --------------------------------------------
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
        if k not in ("total", "quality", "semantic") and "@" not in k and (v := _num(m.get("value"))) is not None
    }


def vbench_radar(runs: list[Run], schema: Schema) -> Plot:
    labels = labels_for(runs)
    scores: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for d, v in _vbench_scores(run).items():
            scores.setdefault(labels[id(run)], {}).setdefault(d, []).append(v)
    means = {c: {d: sum(v) / len(v) for d, v in s.items()} for c, s in scores.items()}
    dims = sorted({d for s in means.values() for d in s})
    if len(dims) < 3:
        return Plot(None, f"a radar needs at least 3 VBench dimensions; these records give {len(dims)}")
    rows, spokes = [], []
    for i, d in enumerate(dims):
        angle = 2 * math.pi * i / len(dims)
        spokes += [
            {"dim": d, "x": 0.0, "y": 0.0, "o": 0},
            {"dim": d, "x": math.sin(angle), "y": math.cos(angle), "o": 1},
        ]
    for config, s in means.items():
        pts = [(d, i) for i, d in enumerate(dims) if d in s]
        for order, (d, i) in enumerate(pts + pts[:1]):  # close the polygon
            angle, r = 2 * math.pi * i / len(dims), max(0.0, min(1.0, s[d]))
            rows.append(
                {
                    FIELD: config,
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
    text = (
        alt.Chart(pd.DataFrame([s for s in spokes if s["o"] == 1]))
        .mark_text(dy=-6)
        .encode(x=alt.X("x:Q", **axis), y=alt.Y("y:Q", **axis), text="dim:N")
    )
    df = pd.DataFrame(rows)
    color, shape, pick, opacity = palette(sorted(df[FIELD].unique()))
    base = alt.Chart(df).encode(
        x=alt.X("x:Q", **axis), y=alt.Y("y:Q", **axis), color=color, opacity=opacity, order="o:Q",
        tooltip=[FIELD, "dimension", alt.Tooltip("score:Q", format=".4f")],
    )  # fmt: skip
    poly = alt.layer(base.mark_line(), base.mark_point(filled=True).encode(shape=shape)).add_params(pick)
    metrics = [(d, _rec_metric(runs, d)) for d in dims]
    return Plot(alt.layer(spoke, text, poly).properties(width=420, height=420, autosize=PAD), None, metrics)


BUILDERS = {
    "needle_heatmap": needle_heatmap,
    "by_number": by_number,
    "best_of_n": best_of_n,
    "kv_pareto": kv_pareto,
    "spec_bars": spec_bars,
    "vbench_radar": vbench_radar,
}
TITLES = {
    "needle_heatmap": "Needle accuracy by context length and depth, per method",
    "by_number": "Metrics by number (context length, N, ...)",
    "best_of_n": "Best-of-N accuracy versus N",
    "kv_pareto": "Quality versus kept KV fraction",
    "spec_bars": "Speculative decoding: τ and speedup",
    "vbench_radar": "VBench dimensions",
}
POOLED = {
    "needle_heatmap": "cells pool every task variant and seed of a configuration (weighted by needles)",
    "by_number": "points average the seeds of a configuration",
}


def caption(plot: Plot, runs: list[Run], schema: Schema, kind: str = "") -> list[str]:
    """What the chart shows, one line per metric drawn ("what it means; which way is better"), and
    how its panels and marks read, plus the zoo label when zoo models made the numbers: lines of plain
    text (the app escapes each)."""
    task = runs[0].task if runs else None
    if kind == "vbench_radar":
        dirs = {schema.metric(n, m, task).direction for n, m in plot.metrics}
        better = f"{dirs.pop()} is better on every spoke" if len(dirs) == 1 else "directions differ per dimension"
        lines = [
            f"Each spoke: one VBench dimension's score ({', '.join(n for n, _ in plot.metrics)}), scaled to 0–1; {better}."
        ]
    else:
        lines = [schema.metric(n, m, task).meaning() for n, m in plot.metrics]
    how = [POOLED[kind]] if kind in POOLED else []
    if plot.independent:
        how.append(INDEPENDENT_NOTE)
    if how:
        lines.append("; ".join(how).capitalize() + ".")
    if any(r.zoo for r in runs):
        lines.append(ZOO_NOTE + ".")
    return lines


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
