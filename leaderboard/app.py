"""The Streamlit leaderboard: `harness leaderboard [--results DIR]` (or `streamlit run` this file
with HARNESS_RESULTS set). A pure reader of the records and of schema.yaml.

Views: the overview ranks the configurations of every task variant by its main metric (with n,
seeds, a 95% interval, grey ranks where intervals overlap, and a CSV download of the filtered
table); a task view ranks by any of the task's metrics and adds its plots (one-line meaning and
direction under each); a run view shows metrics, provenance and the per-sample rows; compare pairs
two configurations sample by sample (paired test, per-sample differences).

Shareable URLs: every filter and selection is in the query string (st.query_params: view, task,
method, family, model, show, rank_by, plot_model, run, q, sample, a, b, metric), written after each
run and read when a session opens, so a copied URL opens the same view. Values that match nothing
are ignored, and the page says so.

Safety: text from records (method names, predictions, paths) is shown through st.dataframe,
st.text, st.json or escaped markdown (tables.md(), also for the ranking tables) — never as HTML
(no unsafe_allow_html anywhere).

First paint: the ranking tables are one escaped Markdown element each (st.table draws every cell
as its own Markdown element: 3 s for 1,000 cells in Chromium), altair is imported only by the
views that draw, and the records are parsed once per process (st.cache_resource, shared by every
session; `harness leaderboard` pre-loads them before the first visitor)."""

from __future__ import annotations

import os
import time

_T0 = time.perf_counter()  # the script reruns per interaction; imports cost only on a process's first run

import streamlit as st  # noqa: E402

from harness.leaderboard import loader, tables  # noqa: E402
from harness.leaderboard.schema import Schema  # noqa: E402
from harness.leaderboard.tables import md  # noqa: E402

_T_IMPORTS = time.perf_counter()
# HARNESS_LEADERBOARD_PROFILE=FILE: each run appends its phase times (seconds) as a JSON line
# (benchmarks/leaderboard_paint.py reads them for its breakdown of the time to first paint)
PROFILE = os.environ.get("HARNESS_LEADERBOARD_PROFILE")

VIEWS = {"overview": "Overview", "task": "Task", "run": "Run detail", "compare": "Compare configurations"}
# widget key -> its query parameter; multiselects repeat theirs (?method=a&method=b)
URL = {
    "view": "view",
    "f_task": "task",
    "f_method": "method",
    "f_family": "family",
    "f_model": "model",
    "task_pick": "show",
    "rank_by": "rank_by",
    "plot_model": "plot_model",
    "run_pick": "run",
    "sample_filter": "q",
    "sample_pick": "sample",
    "cmp_a": "a",
    "cmp_b": "b",
    "cmp_metric": "metric",
}
MULTI = {"f_task", "f_method", "f_family", "f_model"}
_SHOWN: list[str] = []  # the URL-bound widgets of this run, in order (the script reruns top down)
_IGNORED: list[str] = []  # query parameters of the opening URL that matched nothing


@st.cache_resource(ttl=60, show_spinner="Reading records ...")
def _load(root: str):
    schema = Schema.load()
    return loader.preloaded(root, schema) or loader.load(root, schema), schema


def url_default(key: str, options=None, default=None, alias: dict | None = None) -> None:
    """Before the widget `key` is created: its value from the URL the session was opened with (or
    `default`), set once through st.session_state; a value the widget can no longer take (the
    filters changed its options) falls back to the default."""
    _SHOWN.append(key)
    if key in st.session_state:
        v = st.session_state[key]
        if options is not None:
            if key in MULTI:
                st.session_state[key] = [x for x in v if x in options]
            elif v not in options:
                st.session_state[key] = default
        return
    param = URL[key]
    if key in MULTI:
        asked = st.query_params.get_all(param)
        good = [v for v in dict.fromkeys(asked) if v in options]
        _IGNORED.extend(f"{param}={v[:80]}" for v in asked if v not in options)
        st.session_state[key] = good
        return
    v = st.query_params.get(param)
    if v is not None and alias:
        v = alias.get(v, v)
    if v is None or v == "":
        value = default
    elif options is None:
        value = v[:200]
    elif v in options:
        value = v
    else:
        _IGNORED.append(f"{param}={v[:80]}")
        value = default
    if value is not None:
        st.session_state[key] = value


def sync_url() -> None:
    """The query string from the widgets this run showed (every view's state, shareable)."""
    params = {}
    for key in _SHOWN:
        v = st.session_state.get(key)
        if v is None or v == "" or v == []:
            continue
        params[URL[key]] = [str(x) for x in v] if isinstance(v, list) else str(v)
    wanted = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
    if wanted != {k: st.query_params.get_all(k) for k in st.query_params}:
        st.query_params.from_dict(params)


def sidebar(results) -> tuple[str, list]:
    st.sidebar.title("harness leaderboard")
    url_default("view", list(VIEWS), "overview")
    view = st.sidebar.radio("View", list(VIEWS), format_func=VIEWS.get, key="view")
    runs = results.runs
    st.sidebar.caption("Filters (empty = all)")
    chosen = {}
    for key, label, attr in (
        ("f_task", "Task", "task"),
        ("f_method", "Method", "method"),
        ("f_family", "Family", "family"),
        ("f_model", "Model", "model"),
    ):
        options = sorted({getattr(r, attr) for r in runs})
        url_default(key, set(options))
        chosen[key] = st.sidebar.multiselect(label, options, key=key)
    if st.sidebar.button("Reload records"):
        _load.clear()
        loader.forget_preloaded()
        st.rerun()
    shown = tables.filter_runs(runs, chosen["f_task"], chosen["f_method"], chosen["f_family"], chosen["f_model"])
    if any(chosen.values()):
        st.sidebar.caption(f"{len(shown)} of {len(runs)} records match the filters")
    else:
        st.sidebar.caption(f"{len(runs)} records (no filter)")
    return view, shown


def skipped_warning(results) -> None:
    if not results.skipped:
        return
    counts = results.skip_counts()
    summary = "; ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    st.warning(md(f"{len(results.skipped)} file(s) in the results folder were skipped, not valid records: {summary}"))
    with st.expander("Skipped files"):
        st.dataframe([{"file": p, "reason": r} for p, r in results.skipped], hide_index=True)


def caption_lines(lines: list[str]) -> None:
    if lines:
        st.caption("  \n".join(md(line) for line in lines))


def board_block(board) -> None:
    st.subheader(md(board.bench))
    caption_lines([board.header()] + ([tables.ZOO_NOTE] if board.zoo else []))
    st.markdown(board.markdown())  # one escaped Markdown table: plain, searchable page text
    caption_lines(board.notes)


def view_overview(runs, schema) -> None:
    st.header("Overview")
    if not runs:
        st.info("No records match (check the results folder and the filters).")
        return
    download = st.empty()  # filled last: the tables paint first
    if any(r.zoo for r in runs):
        st.info(md(tables.ZOO_NOTE))
    boards = tables.overview(runs, schema)
    for board in boards:
        board_block(board)
    st.subheader("Mean win rate per method family")
    st.caption(
        "On each task variant, the share of the other configurations of the family (and the baseline) "
        "that a configuration beats, averaged over the variants where it ran (configurations the schema "
        "does not rank on the metric excluded)."
    )
    wins = tables.win_rates(boards)
    if wins:
        st.markdown(tables.win_rates_markdown(wins))
    else:
        st.caption("No family has two ranked configurations (or one and the baseline) on one variant here.")
    download.download_button(
        f"Download the filtered table as CSV ({sum(len(b.table) for b in boards)} rows)",
        data=tables.boards_csv(boards).encode("utf-8"),
        file_name="leaderboard.csv",
        mime="text/csv",
        key="csv",
        on_click="ignore",
    )


def _metric_options(runs, schema) -> list[str]:
    """The task's metrics with a value: its main metric first."""
    names: dict[str, None] = {}
    mains = [r.main_metric for r in runs if r.main_metric]
    for m in mains:
        names.setdefault(m)
    for r in runs:
        for k, m in r.record["metrics"].items():
            if isinstance(m, dict) and loader._num(m.get("value")) is not None:
                names.setdefault(k)
    return list(names)


def view_task(runs, schema) -> None:
    st.header("Task")
    names = sorted({r.task for r in runs})
    if not names:
        st.info("No records match.")
        return
    url_default("task_pick", names, names[0])
    task = st.selectbox("Task", names, key="task_pick")
    mine = [r for r in runs if r.task == task]
    display = schema.task(task).get("display")
    if display:
        st.caption(md(display))
    options = _metric_options(mine, schema)
    url_default("rank_by", options, options[0] if options else None)
    metric = st.selectbox(
        "Rank by",
        options,
        key="rank_by",
        format_func=lambda m: schema.metric(m, next((r.metric(m) for r in mine if r.metric(m)), {}), task).display,
    )
    for board in tables.overview(mine, schema, metric=metric):
        board_block(board)
    models = sorted({r.model for r in mine})
    url_default("plot_model", models, models[0])
    model = st.selectbox("Model for the plots", models, key="plot_model")
    shown = [r for r in mine if r.model == model]
    from harness.leaderboard import plots  # altair: imported only where a chart is drawn

    kinds = plots.plots_for(task, shown, schema)
    if not kinds:
        st.caption("No plot applies to these records' fields.")
    for kind in kinds:
        st.subheader(plots.TITLES[kind])
        try:
            plot = plots.BUILDERS[kind](shown, schema)
        except Exception as e:  # a record with a surprising shape costs one plot, not the app
            plot = plots.Plot(None, f"could not draw from these records ({e.__class__.__name__})")
        if plot.chart is None:
            st.caption(md(f"Plot skipped: {plot.note}."))
        else:
            st.altair_chart(plot.chart, width="content")  # its own size: room for the full legend
            caption_lines(plots.caption(plot, shown, schema, kind))


def view_run(runs, schema, results) -> None:
    st.header("Run detail")
    if not runs:
        st.info("No records match.")
        return
    labels = tables.config_labels(runs)
    by_id = {r.run_id: r for r in runs}
    ids = list(by_id)
    url_default("run_pick", set(ids), ids[0])
    rid = st.selectbox("Run", ids, format_func=lambda i: tables.run_label(by_id[i], labels), key="run_pick")
    run = by_id[rid]
    st.subheader(md(f"{labels.get(run.config, run.method)} on {run.bench}"))
    st.text(f"model: {run.model}\nseed: {run.seed}\nrecord: {run.path}")
    if run.zoo:
        st.caption(md(tables.ZOO_NOTE))
    if run.model_label:
        st.text(f"model label: {run.model_label}")
    st.text(f"calibrated: {run.calibrated}")
    st.markdown("**Metrics**")
    st.dataframe(tables.metrics_table(run, schema), hide_index=True)
    rec = run.record
    with st.expander("Provenance and configuration", expanded=True):
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
    url_default("sample_filter")
    query = st.text_input("Filter samples (substring of any field)", key="sample_filter")
    frame = tables.filter_samples(tables.sample_frame(samples), query)
    st.dataframe(frame, hide_index=True)
    by_sid = {str(s.get("id")): s for s in samples}
    sids = [str(i) for i in frame["id"]] if "id" in frame else []
    if sids:  # the selector lists the samples the filter left, not all of them
        url_default("sample_pick", set(sids), sids[0])
        sid = st.selectbox(f"Sample ({len(sids)} of {len(samples)})", sids, key="sample_pick")
        st.json(by_sid[sid])
    elif query:
        st.caption("No sample matches the filter.")


def view_compare(runs, schema, results) -> None:
    st.header("Compare two configurations")
    configs: dict[str, list] = {}
    for r in runs:
        configs.setdefault(r.config, []).append(r)
    if len(configs) < 2:
        st.info("Need at least two configurations.")
        return
    labels = tables.config_labels(runs)
    first = {cid: rs[0] for cid, rs in configs.items()}
    ids = sorted(configs, key=lambda c: (first[c].bench, first[c].model, labels[c]))
    alias = {r.run_id: r.config for r in runs}  # a shared link may name a run: its configuration

    def label(cid: str) -> str:
        rs = configs[cid]
        return f"{first[cid].bench} · {labels[cid]} · {first[cid].model} · {len(rs)} seed{'s' if len(rs) > 1 else ''}"

    def partners(cid: str) -> list[str]:
        return [c for c in ids if c != cid and (first[c].bench, first[c].model) == (first[cid].bench, first[cid].model)]

    def paired(cid: str) -> bool:  # its main metric has per-sample values: a paired test is possible
        return bool(first[cid].metric(first[cid].main_metric or "").get("sample_field"))

    order = sorted(ids, key=lambda c: not paired(c))
    default_a = next((c for c in order if partners(c)), ids[0])
    url_default("cmp_a", set(ids), default_a, alias)
    a_id = st.selectbox("Configuration A", ids, format_func=label, key="cmp_a")
    b_ids = partners(a_id) + [c for c in ids if c != a_id and c not in partners(a_id)]
    url_default("cmp_b", set(b_ids), b_ids[0], alias)
    b_id = st.selectbox("Configuration B", b_ids, format_func=label, key="cmp_b")
    a, b = configs[a_id], configs[b_id]
    shared = [m for m in a[0].record["metrics"] if m in b[0].record["metrics"]]
    if not shared:
        st.info("The two configurations share no metric.")
        return
    main = a[0].main_metric if a[0].main_metric in shared else shared[0]
    url_default("cmp_metric", shared, main)
    metric = st.selectbox("Metric", shared, key="cmp_metric")
    rows_a, rows_b, problems = {}, {}, []
    for rs, rows in ((a, rows_a), (b, rows_b)):
        for r in rs:
            rows[r.run_id], problem = loader.load_samples(results.root, r)
            if problem:
                problems.append(problem)
    if problems:
        st.caption(md(f"Per-sample rows unavailable: {problems[0]}"))
    c = tables.compare(a, b, rows_a, rows_b, metric)
    info = schema.metric(metric, a[0].metric(metric), a[0].task)
    st.text(
        f"A: {label(a_id)} · {info.display} {info.fmt(c.value_a)}\n"
        f"B: {label(b_id)} · {info.display} {info.fmt(c.value_b)}"
    )
    caption_lines([info.meaning()] + ([tables.ZOO_NOTE] if any(r.zoo for r in a + b) else []))
    if c.note:
        st.caption(md(c.note))
        return
    st.text(
        f"{info.display}: paired on {c.n_paired} shared samples ({c.pairing}); {c.test}: {c.p_text}; "
        f"{len(c.changed)} samples differ"
    )
    lo_hi = f" [95% CI {info.fmt(c.diff_interval[0])}, {info.fmt(c.diff_interval[1])}]" if c.diff_interval else ""
    favours = "B" if (c.mean_diff > 0) == (info.direction == "higher") else "A"
    st.text(
        f"mean difference b − a = {info.fmt(c.mean_diff)}{lo_hi}"
        + (f" (favours {favours}: {info.better})" if c.mean_diff else "")
        + "\n"
        + ("significant at 0.05" if c.p_value < 0.05 else "not significant at 0.05 (could be noise)")
    )
    st.subheader("Per-sample differences (b − a)")
    import altair as alt  # imported only where a chart is drawn
    import pandas as pd

    hist = (
        alt.Chart(pd.DataFrame({tables.DIFF: c.diffs}))
        .mark_bar()
        .encode(
            x=alt.X(f"{tables.DIFF}:Q", bin=alt.Bin(maxbins=40), title=f"b − a ({info.display})"),
            y=alt.Y("count():Q", title="samples"),
        )
        .properties(width=480, height=180)
    )
    st.altair_chart(hist)
    caption_lines(
        [
            f"Each bar: samples whose {info.display} differs by that much between B and A on the same sample; "
            f"{info.description or info.display}; {info.better}, so b − a {'> 0' if info.direction == 'higher' else '< 0'} favours B."
        ]
        + ([tables.ZOO_NOTE] if any(r.zoo for r in a + b) else [])
    )
    st.caption(f"The {len(c.changed)} samples that differ, largest difference first:")
    st.dataframe(c.changed, hide_index=True)


def main() -> None:
    st.set_page_config(page_title="harness leaderboard", layout="wide")
    _SHOWN.clear()
    _IGNORED.clear()
    root = os.environ.get("HARNESS_RESULTS", "results")
    t_load = time.perf_counter()
    results, schema = _load(root)
    t_sidebar = time.perf_counter()
    view, runs = sidebar(results)
    t_view = time.perf_counter()
    notices = st.empty()
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
    if _IGNORED:
        notices.caption(md("ignored from the URL (matches nothing here): " + ", ".join(_IGNORED)))
    sync_url()
    if PROFILE:
        import json

        end = time.perf_counter()
        phases = {"imports": _T_IMPORTS - _T0, "load": t_sidebar - t_load, "sidebar": t_view - t_sidebar}
        phases.update({"view": end - t_view, "script": end - _T0, "records": len(results.runs), "view_name": view})
        with open(PROFILE, "a") as f:
            f.write(json.dumps(phases) + "\n")


main()
