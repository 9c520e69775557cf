"""What the leaderboard says, checked against a results folder whose right answers are known
(tests/leaderboard_known.py): the ranking order, the grouping (two configurations of one method
stay two rows; three seeds of one configuration become one row with seeds = 3), greyed ranks
where 95% intervals overlap, n next to every score, the bootstrap p-value as "p < 1/B", a
degenerate baseline that is not ranked, the one-line meaning and direction under every chart,
independent y-scales of faceted charts, the 40-method palette and legend, the filtered record
count, sample and run selectors, the URL round trip (a shared URL opens the same view), the
CSV download of the filtered table, the compare view of two configurations, the needle heatmap per
method and the zoo labels. Streamlit's AppTest (no browser): a few seconds each; the same checks in
Chromium are in tests/test_leaderboard_browser.py (slow)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from unittest import mock

import pytest

from harness.leaderboard import loader
from tests.leaderboard_data import APP, EVIL, boards, label, metric, plain, put, record, walk
from tests import leaderboard_known
from tests.leaderboard_known import FORMULA, HOSTILE_NOTE, LAT_ORDER, NEEDLE_ORDER, total_records
from tests.test_leaderboard_app import app_test
from tests.test_leaderboard_inert import LIVE

known = leaderboard_known.known  # the known-answers folder (a fixture)


def texts(at, kinds=("caption", "markdown", "text", "info", "warning")) -> str:
    return "\n".join(plain(str(e.value)) for k in kinds for e in getattr(at, k))


def charts(at) -> list:
    return [el for el in walk(at.main) if getattr(el, "type", "") == "vega_lite_chart"]


def spec(el) -> dict:
    return json.loads(el.proto.spec)


def chart_rows(el) -> list[dict]:
    """The rows a drawn chart carries (Streamlit sends them beside the spec, as Arrow)."""
    import pyarrow as pa

    rows = []
    for ds in el.proto.datasets:
        rows += pa.ipc.open_stream(ds.data.data).read_all().to_pylist()
    return rows


def runs_of(root):
    return loader.load(root).runs


def open_app(root, **params):
    """The app opened at a URL with these query parameters (a new session)."""
    from streamlit.testing.v1 import AppTest

    os.environ["HARNESS_RESULTS"] = str(root)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params = dict(params)
    at.run()
    assert not at.exception, at.exception
    return at


# -- grouping and ranking ------------------------------------------------------------------------
def test_configurations_stay_rows_and_seeds_become_one_row(known):
    at = app_test(known)
    b = boards(at)
    needle = b["needle"]
    assert [label(r) for r in needle] == NEEDLE_ORDER  # two yarn configurations: two rows
    rows = {label(r): r for r in needle}
    assert plain(rows["yarn (factor=4)"]["seeds"]) == "3"  # three seeds: one row, n = 3 runs
    assert plain(rows["yarn (factor=4)"]["Accuracy (fraction)"]).startswith("0.900")
    assert {plain(rows[k]["seeds"]) for k in ("pi", "yarn (factor=8)", "baseline")} == {"1"}
    assert [label(r) for r in b["lat"]] == LAT_ORDER  # lower is better


def test_ranks_whose_intervals_overlap_are_grey(known):
    needle = boards(app_test(known))["needle"]
    ranks = [r["rank"] for r in needle]
    assert ranks[0] == "1" and ranks[3] == "4"  # separated from every other row
    assert ranks[1] == ":gray[2]" and ranks[2] == ":gray[3]"  # pi and yarn (factor=8): 0.60 vs 0.50 on 100
    intervals = [plain(r["95% CI"]) for r in needle]
    assert intervals[0].startswith("[0.8") and intervals[1] == "[0.502, 0.691]"  # Wilson, n = 100


def test_n_is_shown_next_to_every_score(known):
    at = app_test(known)
    b = boards(at)
    assert [plain(r["n"]) for r in b["needle"]] == ["100"] * 4
    assert [plain(r["n"]) for r in b["kv_compression"]] == ["2", "2"]
    assert "few samples" in texts(at) and "n = 2" in texts(at)


def test_bootstrap_p_value_is_stated_as_below_one_over_B(known):
    runs = {r.method: r for r in runs_of(known) if r.task == "lat"}
    at = open_app(known, view="compare", a=runs["b"].run_id, b=runs["a"].run_id, metric="latency")
    shown = texts(at)
    assert "paired bootstrap" in shown
    assert "p < 0.0001 (1/B, B = 10,000 resamples)" in shown
    assert not re.search(r"p = 0(\.0*)?\b(?!\.\d*[1-9])", shown)


def test_a_degenerate_baseline_is_not_ranked_and_says_why(known):
    at = open_app(known, view="task", task="noise_prior", rank_by="temporal_corr_error")
    rows = boards(at)["noise_prior"]
    assert [label(r) for r in rows] == ["pyoco_mixed", "independent", "fixed"]
    assert [plain(r["rank"]) for r in rows] == ["1", "2", "—"]
    shown = texts(at)
    assert "fixed is not ranked on temporal_corr_error: fixed noise repeats one frame" in shown
    assert "lower is better" in shown


# -- charts --------------------------------------------------------------------------------------
def test_every_chart_has_its_meaning_and_direction_underneath(known):
    at = open_app(known, view="task", task="needle")
    elements = list(walk(at.main))
    drawn = [i for i, el in enumerate(elements) if getattr(el, "type", "") == "vega_lite_chart"]
    assert len(drawn) >= 2  # heatmap and accuracy by length
    for i in drawn:
        under = elements[i + 1]
        assert getattr(under, "type", "") == "caption", i
        text = plain(under.value)
        assert "higher is better" in text and "fraction of needles" in text, text


def test_faceted_charts_have_independent_y_scales_and_say_so(known):
    for method, ppl in (("yarn", 20.0), ("pi", 35.0)):  # perplexity (~20-40) and NLL (~3) in one chart
        ms = {f"perplexity@{n}": metric(ppl * k, "lower", n=1000) for n, k in ((512, 1), (1024, 1.5))}
        ms.update({f"nll@{n}": metric(math.log(v["value"]), "lower", n=1000) for n, v in zip((512, 1024), ms.values())})
        put(known, record("perplexity", method, ms, "perplexity@512", family="rope"))
    at = open_app(known, view="task", task="perplexity")
    [drawn] = charts(at)
    s = spec(drawn)
    assert s["resolve"]["scale"]["y"] == "independent" and s["facet"]["field"] == "metric"
    assert {r["metric"] for r in chart_rows(drawn)} == {"Perplexity @ N", "NLL @ N"}
    assert "each panel has its own y-axis" in texts(at).lower()
    at = open_app(known, view="task", task="needle")  # one metric family: one panel, nothing to say
    assert all("facet" not in spec(c) or "resolve" not in spec(c) for c in charts(at) if '"rect"' not in c.proto.spec)


def test_forty_methods_get_distinct_marks_and_a_full_legend(tmp_path):
    from harness.leaderboard import plots
    from harness.leaderboard.schema import Schema

    for i in range(40):
        put(
            tmp_path,
            record(
                "passkey",
                f"method{i:02d}",
                {"accuracy@512": metric(i / 40), "accuracy@1024": metric(i / 80)},
                "accuracy@512",
            ),
        )
    chart, note = plots.BUILDERS["by_number"](runs_of(tmp_path), Schema.load())[:2]
    s = chart.to_dict()
    encodings = list(_find(s, "encoding"))
    colors = next(e["color"] for e in encodings if "color" in e)
    shapes = next(e["shape"] for e in encodings if "shape" in e)
    assert colors["legend"]["symbolLimit"] == 0 and colors["legend"]["labelLimit"] >= 300  # Vega drops > 30
    domain = colors["scale"]["domain"]
    assert len(domain) == 40 and shapes["scale"]["domain"] == domain
    pairs = set(zip(colors["scale"]["range"], shapes["scale"]["range"]))
    assert len(pairs) == 40  # every method a distinct (colour, marker) pair
    assert any(p.get("bind") == "legend" for p in _find(s, "params") for p in p), "click a legend entry to highlight"


def _find(obj, key):
    """Every value stored under `key` anywhere in a nested spec."""
    if isinstance(obj, dict):
        if key in obj:
            yield obj[key]
        for v in obj.values():
            yield from _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


# -- selectors, counts, URL ------------------------------------------------------------------------
def test_sidebar_count_follows_the_filters(known):
    at = app_test(known)
    at.sidebar.multiselect(key="f_method").set_value(["yarn"]).run()
    assert f"4 of {total_records()} records match the filters" in texts(at.sidebar, ("caption",))


def test_sample_selector_follows_the_sample_filter(known):
    pi = next(r for r in runs_of(known) if r.method == "pi")
    at = open_app(known, view="run", run=pi.run_id)
    at.text_input(key="sample_filter").input("s1").run()
    options = at.selectbox(key="sample_pick").options
    assert sorted(options) == sorted(["s1"] + [f"s1{i}" for i in range(10)])


def test_run_selector_labels_show_the_parameters(known):
    at = open_app(known, view="run")
    options = at.selectbox(key="run_pick").options
    assert any("yarn (factor=8)" in o for o in options) and any(
        "yarn (factor=4)" in o and "seed 2" in o for o in options
    )


def test_url_round_trip_opens_the_same_view(known):
    at = open_app(known, view="overview", method=["yarn", "pi"])
    assert [label(r) for r in boards(at)["needle"]] == ["yarn (factor=4)", "pi", "yarn (factor=8)"]
    at.sidebar.multiselect(key="f_method").set_value(["pi", "b"]).run()
    at.sidebar.radio(key="view").set_value("task").run()
    shared = dict(at.query_params)
    assert shared.get("view") == "task" and sorted(shared["method"]) == ["b", "pi"]
    again = open_app(known, **shared)  # a new session opened from the shared URL
    assert again.sidebar.radio(key="view").value == "task"
    assert sorted(again.sidebar.multiselect(key="f_method").value) == ["b", "pi"]
    assert again.selectbox(key="task_pick").value == at.selectbox(key="task_pick").value
    assert texts(again, ("subheader",)) == texts(at, ("subheader",))


def test_url_with_unknown_or_hostile_values_is_ignored_and_stays_inert(known):
    at = open_app(known, view="nonsense", method=["pi", EVIL], run="../../etc/passwd")
    assert at.sidebar.radio(key="view").value == "overview"
    assert at.sidebar.multiselect(key="f_method").value == ["pi"]
    assert "ignored from the URL" in texts(at) and "view=nonsense" in texts(at)
    raw = "\n".join(str(e.value) for k in ("caption", "markdown", "text") for e in getattr(at, k))
    assert "onerror" in raw and not LIVE.search(raw)  # shown, escaped


# -- CSV, compare, heatmap, zoo ----------------------------------------------------------------------
def _downloads(root, **params) -> dict[str, bytes]:
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    got = {}
    real = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        if mimetype.startswith("text/csv"):
            got[filename] = path_or_data if isinstance(path_or_data, bytes) else str(path_or_data).encode()
        return real(self, path_or_data, mimetype, kind, filename)

    with mock.patch.object(MemoryMediaFileStorage, "load_and_get_id", spy):
        at = open_app(root, **params)
    return at, got


def test_csv_download_is_the_filtered_table(known):
    at, got = _downloads(known, task=["lat", "needle"], method=["c", "b", "yarn"])
    [(name, data)] = got.items()
    assert name.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert [(r["task"], r["configuration"]) for r in rows] == [
        ("lat", "b"),
        ("lat", "c"),
        ("needle", "yarn (factor=4)"),
        ("needle", "yarn (factor=8)"),
    ]
    yarn4 = rows[2]
    assert yarn4["seeds"] == "3" and yarn4["zoo"] == "true" and float(yarn4["value"]) == pytest.approx(0.9)
    assert yarn4["direction"] == "higher" and yarn4["n"] == "100"
    assert rows[1]["method_params"] == "note=" + HOSTILE_NOTE  # CSV is data: record text as it is


def test_csv_cells_never_start_a_spreadsheet_formula(tmp_path):
    for name in (FORMULA, "+1", "-2", "@SUM(A1)", "plain"):
        put(tmp_path, record("lat", name, {"ms": metric(1.0, "lower")}, "ms", family=FORMULA, model="none"))
    at, got = _downloads(tmp_path)
    [data] = got.values()
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert sorted(r["method"] for r in rows) == sorted(["'" + FORMULA, "'+1", "'-2", "'@SUM(A1)", "plain"])
    assert all(r["family"] == "'" + FORMULA for r in rows)


def test_compare_two_configurations_on_the_same_samples(known):
    configs = {}
    for r in runs_of(known):
        configs.setdefault((r.method, json.dumps(r.record["method"]["params"])), r)
    yarn4 = next(r for (m, p), r in configs.items() if m == "yarn" and '"factor": 4' in p)
    pi = next(r for (m, _), r in configs.items() if m == "pi")
    at = open_app(known, view="compare", a=yarn4.run_id, b=pi.run_id, metric="accuracy")
    shown = texts(at)
    assert "yarn (factor=4)" in shown and "3 seeds" in shown
    assert "paired on 100 shared samples (seed 0)" in shown and "McNemar (exact)" in shown
    diffs = [d.value for d in at.dataframe if "b − a" in d.value.columns]
    assert diffs and set(diffs[0]["b − a"]) <= {-1.0, 1.0} and len(diffs[0]) == 28  # 0.88 vs 0.60 on 100 ids
    assert any("differences" in plain(s.value) for s in at.subheader)


def test_needle_heatmap_has_one_panel_per_method_configuration(known):
    at = open_app(known, view="task", task="needle")
    heat = next(c for c in charts(at) if '"rect"' in c.proto.spec)
    data = chart_rows(heat)
    assert {d["configuration"] for d in data} == set(NEEDLE_ORDER)
    cell = [
        d for d in data if d["configuration"] == "yarn (factor=4)" and d["context_length"] == 512 and d["depth %"] == 0
    ]
    assert len(cell) == 1 and cell[0]["accuracy"] == pytest.approx((0.98 + 1.0 + 1.0) / 3, abs=1e-9)


def test_zoo_label_under_every_zoo_table_and_chart(known):
    at = app_test(known)
    elements = list(walk(at.main))
    heads = [i for i, el in enumerate(elements) if getattr(el, "type", "") == "subheader"]
    for i, j in zip(heads, heads[1:] + [len(elements)]):
        block = "\n".join(plain(str(getattr(e, "value", ""))) for e in elements[i:j])
        name = plain(elements[i].value)
        if name in ("needle", "kv_compression"):
            assert "zoo model" in block and "not for real LLMs" in block, name
        elif name in ("lat", "noise_prior"):
            assert "zoo model" not in block, name
    at = open_app(known, view="task", task="needle")
    elements = list(walk(at.main))
    for i, el in enumerate(elements):
        if getattr(el, "type", "") == "vega_lite_chart":
            assert "zoo model" in plain(elements[i + 1].value)  # the caption right under the chart
