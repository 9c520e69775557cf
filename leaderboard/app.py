"""The Streamlit leaderboard: `harness leaderboard [--results DIR]` (or `streamlit run` this file
with HARNESS_RESULTS set). A pure reader of the records and of schema.yaml.

Views (sidebar, or ?view=overview|task|run|compare with task=, run=, a=, b=): the overview ranks
the methods of every task variant by its main metric; a task view adds the task's plots; a run
view shows metrics, provenance and the per-sample rows; compare pairs two runs sample by sample.

Safety: text from records (method names, predictions, paths) is shown through st.dataframe,
st.text, st.json or escaped markdown (md(); st.table, which renders Markdown, through inert()) —
never as HTML (no unsafe_allow_html anywhere)."""

from __future__ import annotations

import os
import re

import streamlit as st

from harness.leaderboard import loader, plots, tables
from harness.leaderboard.schema import Schema

VIEWS = {"overview": "Overview", "task": "Task", "run": "Run detail", "compare": "Compare runs"}
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text) -> str:
    """Record text made inert for st.markdown-family calls (no links, images, HTML or emphasis)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def inert(frame):
    """A frame for st.table, which renders Markdown in its cells and headers: every text cell,
    column name and index label escaped with md() (numbers are left as they are)."""
    esc = lambda v: md(v) if isinstance(v, str) else v  # noqa: E731
    out = frame.map(esc).rename(columns=esc, index=esc)
    out.index.name = esc(frame.index.name)
    return out


@st.cache_resource(ttl=60, show_spinner="Reading records ...")
def _load(root: str):
    schema = Schema.load()
    return loader.load(root, schema), schema


def _param(name: str, default=None):
    value = st.query_params.get(name)
    return value if value else default


def _run_label(run) -> str:
    return f"{run.bench} · {run.method} · {run.model} · seed {run.seed} · {run.run_id}"


def sidebar(results) -> tuple[str, list]:
    st.sidebar.title("harness leaderboard")
    keys = list(VIEWS)
    start = _param("view", "overview")
    view = st.sidebar.radio(
        "View", keys, index=keys.index(start) if start in keys else 0, format_func=VIEWS.get, key="view"
    )
    runs = results.runs
    st.sidebar.caption("Filters (empty = all)")
    f_task = st.sidebar.multiselect("Task", sorted({r.task for r in runs}), key="f_task")
    f_method = st.sidebar.multiselect("Method", sorted({r.method for r in runs}), key="f_method")
    f_family = st.sidebar.multiselect("Family", sorted({r.family for r in runs}), key="f_family")
    f_model = st.sidebar.multiselect("Model", sorted({r.model for r in runs}), key="f_model")
    if st.sidebar.button("Reload records"):
        _load.clear()
        st.rerun()
    st.sidebar.caption(f"{len(runs)} records")
    return view, tables.filter_runs(runs, f_task, f_method, f_family, f_model)


def skipped_warning(results) -> None:
    if not results.skipped:
        return
    counts = results.skip_counts()
    summary = "; ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    st.warning(md(f"{len(results.skipped)} file(s) in the results folder were skipped, not valid records: {summary}"))
    with st.expander("Skipped files"):
        st.dataframe([{"file": p, "reason": r} for p, r in results.skipped], hide_index=True)


def board_block(board) -> None:
    st.subheader(md(board.bench))
    arrow = "higher is better" if board.direction == "higher" else "lower is better"
    st.caption(md(f"model {board.model} · main metric: {board.metric_display}, {arrow}"))
    if board.zoo:
        st.caption(md(tables.ZOO_NOTE))
    if not board.table["calibrated"].all():
        st.caption(md("uncalibrated: some scorers ran with random-init or proxy weights (calibrated = false)"))
    # a static table (escaped text, no canvas) so the ranking is plain, searchable page text
    shown = board.table.assign(
        value=board.table["value"].map(board.fmt), stderr=board.table["stderr"].map(board.fmt)
    ).set_index("rank")
    st.table(inert(shown.rename(columns={"value": board.metric})))


def view_overview(runs, schema) -> None:
    st.header("Overview")
    if not runs:
        st.info("No records match (check the results folder and the filters).")
        return
    if any(r.zoo for r in runs):
        st.info(md(tables.ZOO_NOTE))
    boards = tables.overview(runs, schema)
    for board in boards:
        board_block(board)
    st.subheader("Mean win rate per method family")
    st.caption(
        "On each task variant, the share of the other methods of the family (and the baseline) "
        "that a method beats, averaged over the variants where it ran."
    )
    st.dataframe(tables.win_rates(boards), hide_index=True)


def view_task(runs, schema) -> None:
    st.header("Task")
    names = sorted({r.task for r in runs})
    if not names:
        st.info("No records match.")
        return
    start = _param("task")
    task = st.selectbox("Task", names, index=names.index(start) if start in names else 0, key="task_pick")
    mine = [r for r in runs if r.task == task]
    display = schema.task(task).get("display")
    if display:
        st.caption(md(display))
    for board in tables.overview(mine, schema):
        board_block(board)
    models = sorted({r.model for r in mine})
    model = st.selectbox("Model for the plots", models, key="plot_model") if len(models) > 1 else models[0]
    shown = [r for r in mine if r.model == model]
    kinds = plots.plots_for(task, shown, schema)
    if not kinds:
        st.caption("No plot applies to these records' fields.")
    for kind in kinds:
        st.subheader(plots.TITLES[kind])
        try:
            chart, note = plots.BUILDERS[kind](shown, schema)
        except Exception as e:  # a record with a surprising shape costs one plot, not the app
            chart, note = None, f"could not draw from these records ({e.__class__.__name__})"
        if chart is None:
            st.caption(md(f"Plot skipped: {note}."))
        else:
            st.altair_chart(chart)


def view_run(runs, schema, results) -> None:
    st.header("Run detail")
    if not runs:
        st.info("No records match.")
        return
    ids = [r.run_id for r in runs]
    start = _param("run")
    pick = st.selectbox(
        "Run",
        range(len(runs)),
        index=ids.index(start) if start in ids else 0,
        format_func=lambda i: _run_label(runs[i]),
        key="run_pick",
    )
    run = runs[pick]
    st.subheader(md(f"{run.method} on {run.bench}"))
    st.text(f"model: {run.model}\nrecord: {run.path}")
    if run.zoo:
        st.caption(md(tables.ZOO_NOTE))
    if run.model_label:
        st.text(f"model label: {run.model_label}")
    st.text(f"calibrated: {run.calibrated}")
    st.markdown("**Metrics**")
    st.dataframe(tables.metrics_table(run, schema), hide_index=True)
    with st.expander("Provenance and configuration", expanded=True):
        rec = run.record
        rows = tables.flatten(
            {
                "task": rec["task"],
                "method": rec["method"],
                "model": rec["model"],
                "seed": rec.get("seed"),
                "limit": rec.get("limit"),
                "provenance": rec["provenance"],
                "telemetry": rec.get("telemetry") or {},
            }
        )
        st.dataframe([{"field": k, "value": str(v)} for k, v in rows], hide_index=True)
    if rec.get("details"):
        with st.expander("Details"):
            st.json(rec["details"], expanded=False)
    st.markdown("**Samples**")
    samples, problem = loader.load_samples(results.root, run)
    if problem:
        st.caption(md(f"Per-sample rows unavailable: {problem}"))
        return
    query = st.text_input("Filter samples (substring of any field)", key="sample_filter")
    frame = tables.sample_frame(samples)
    if query and len(frame):
        mask = frame.astype(str).apply(lambda col: col.str.contains(query, regex=False)).any(axis=1)
        frame = frame[mask]
    st.dataframe(frame, hide_index=True)
    ids = [str(s.get("id")) for s in samples]
    if ids:
        sid = st.selectbox("Sample", ids, key="sample_pick")
        st.json(samples[ids.index(sid)])


def view_compare(runs, schema, results) -> None:
    st.header("Compare two runs")
    if len(runs) < 2:
        st.info("Need at least two records.")
        return
    ids = [r.run_id for r in runs]

    def partners(i: int) -> list[int]:
        return [j for j, r in enumerate(runs) if r.bench == runs[i].bench and r.model == runs[i].model and j != i]

    def paired(i: int) -> bool:  # its main metric has per-sample values: a paired test is possible
        rec = runs[i].record
        return bool((rec["metrics"].get(rec.get("main_metric")) or {}).get("sample_field"))

    # default A: the first run with a comparable partner (same task variant and model), per-sample first
    order = sorted(range(len(runs)), key=lambda i: not paired(i))
    ia = ids.index(_param("a")) if _param("a") in ids else next((i for i in order if partners(i)), 0)
    same = partners(ia)
    ib = ids.index(_param("b")) if _param("b") in ids else (same[0] if same else (1 if ia == 0 else 0))
    fmt = lambda i: _run_label(runs[i])
    a = runs[st.selectbox("Run A", range(len(runs)), index=ia, format_func=fmt, key="cmp_a")]
    b = runs[st.selectbox("Run B", range(len(runs)), index=ib, format_func=fmt, key="cmp_b")]
    shared = [m for m in a.record["metrics"] if m in b.record["metrics"]]
    if not shared:
        st.info("The two runs share no metric.")
        return
    main = a.main_metric if a.main_metric in shared else shared[0]
    metric = st.selectbox("Metric", shared, index=shared.index(main), key="cmp_metric")
    sa, pa = loader.load_samples(results.root, a)
    sb, pb = loader.load_samples(results.root, b)
    if pa or pb:
        st.caption(md(f"Per-sample rows unavailable: {pa or pb}"))
    c = tables.compare(a, b, sa, sb, metric)
    info = schema.metric(metric, a.metric(metric))
    st.dataframe(
        [{"run": "A", "method": a.method, "value": c.value_a}, {"run": "B", "method": b.method, "value": c.value_b}],
        hide_index=True,
    )
    if c.note:
        st.caption(md(c.note))
        return
    st.text(
        f"{info.display}: paired on {c.n_paired} shared samples ({c.field}); {c.test}: "
        f"p = {c.p_value:.4g}; {len(c.changed)} samples differ"
    )
    st.text("significant at 0.05" if c.p_value < 0.05 else "not significant at 0.05 (could be noise)")
    st.dataframe(c.changed, hide_index=True)


def main() -> None:
    st.set_page_config(page_title="harness leaderboard", layout="wide")
    root = os.environ.get("HARNESS_RESULTS", "results")
    results, schema = _load(root)
    view, runs = sidebar(results)
    st.caption(md(f"results folder: {root}"))
    skipped_warning(results)
    if view == "overview":
        view_overview(runs, schema)
    elif view == "task":
        view_task(runs, schema)
    elif view == "run":
        view_run(runs, schema, results)
    else:
        view_compare(runs, schema, results)


main()
