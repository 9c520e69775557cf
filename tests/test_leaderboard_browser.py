"""The leaderboard in a real headless Chromium (driven over the DevTools protocol, tests/chromium.py):
`harness leaderboard` serves a results folder on a loopback port.

On the committed results: the overview shows every committed reference result, and each view
renders. On the known-answers folder (tests/leaderboard_known.py), what the page *means*: the
ranking order and grouping, grey ranks, the p-value text, the URL round trip (a shared URL opens
the same filters; a view changed in the page lands in the URL), the CSV download of the filtered
table, the compare view, the needle heatmap, a 40-method legend drawn in full with distinct marks,
and hostile record text shown as text (no element, link or script made from it).

A screenshot per view goes to the test's tmp_path (pytest keeps the last runs' under its basetemp),
never into the working tree. Every check waits for its condition with a generous deadline:
Streamlit renders client-side, in pieces, and a loaded machine renders slowly. Slow tests
(`make test-slow`): Chromium and a Streamlit server take most of a minute to start on a loaded
2-core machine. Chromium is Debian's `chromium`, installed with apt-get when missing; the tests are
skipped (with the reason) only when that is impossible here."""

import csv
import io
import time
from collections import defaultdict
from pathlib import Path

import pytest

from harness.leaderboard import loader
from tests import chromium
from tests.leaderboard_data import EVIL, metric, put, record
from tests.leaderboard_known import HOSTILE_NOTE, LAT_ORDER, NEEDLE_ORDER, known_results

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# the ranking tables of the page: per table its rows of cell texts, and per rank cell its colour
TABLES_JS = """
Array.from(document.querySelectorAll('[data-testid="stMarkdownContainer"] table')).map(t => ({
  head: Array.from(t.querySelectorAll('thead th')).map(c => c.innerText.trim()),
  rows: Array.from(t.querySelectorAll('tbody tr')).map(r => Array.from(r.children).map(c => c.innerText.trim())),
  rank_colours: Array.from(t.querySelectorAll('tbody tr')).map(r => {
    const c = r.children[0]; const s = c.querySelector('span') || c; return getComputedStyle(s).color; }),
}))
"""


def _browser():
    try:
        return chromium.find_chromium()
    except chromium.BrowserUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def browser_app():
    path = _browser()
    with chromium.leaderboard_server(ROOT / "results") as (base, _, _up), chromium.chromium_page(path) as cdp:
        yield cdp, base


@pytest.fixture(scope="module")
def known_app(tmp_path_factory):
    path = _browser()
    root = known_results(tmp_path_factory.mktemp("known") / "results")
    put(
        root,
        record("evil", EVIL, {"accuracy": metric(0.5, sample_field="score")}, "accuracy"),
        [{"id": "s0", "score": 1.0, "prediction": EVIL}],
    )
    downloads = tmp_path_factory.mktemp("downloads")
    with chromium.leaderboard_server(root) as (base, _, _up), chromium.chromium_page(path, downloads) as cdp:
        cdp.call("Page.addScriptToEvaluateOnNewDocument", source="window.alert = () => { window.__alerted = true; };")
        yield cdp, base, root, downloads


def _table(cdp, containing: str) -> dict:
    return next(t for t in cdp.js(TABLES_JS) if any(containing == r[1] for r in t["rows"]))


# -- committed results --------------------------------------------------------------------------------
def test_overview_in_chromium_shows_the_committed_results(browser_app, tmp_path):
    cdp, base = browser_app
    committed = loader.load(ROOT / "results")
    assert committed.runs and not committed.skipped
    tasks = sorted({r.task for r in committed.runs})
    methods = sorted({r.method for r in committed.runs})  # every committed method, in its task's table
    seeds = defaultdict(list)  # a configuration's row shows the mean over its seeds
    for r in committed.runs:
        if r.task == "needle":
            seeds[r.config].append(r.main_value)
    best = max(sum(v) / len(v) for v in seeds.values())
    expect = (
        ["Overview", "Mean win rate", "zoo model", "not for real LLMs", f"{best:.3f}"] + tasks + methods
    )  # the schema's format of the main metric
    text = cdp.open(f"{base}/?view=overview", expect)  # waits until all of it has rendered
    assert [m for m in methods if m not in text] == []
    cdp.screenshot(tmp_path / "overview.png")
    assert (tmp_path / "overview.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "view,query,expect",
    [
        (
            "task",
            "show=needle",
            ["Needle accuracy by context length and depth", "Metrics by number", "higher is better"],
        ),
        ("run", "", ["Run detail", "Metrics", "Samples"]),
        ("compare", "", ["Compare two configurations", "shared samples", "Per-sample differences"]),
    ],
)
def test_each_view_renders_in_chromium(browser_app, tmp_path, view, query, expect):
    cdp, base = browser_app
    text = cdp.open(f"{base}/?view={view}&{query}", expect)
    assert "Traceback" not in text and "Error" not in text.split("Samples")[0]
    cdp.screenshot(tmp_path / f"{view}.png")
    assert (tmp_path / f"{view}.png").stat().st_size > 10_000


# -- known answers --------------------------------------------------------------------------------------
def test_ranking_grouping_and_grey_ranks_in_chromium(known_app):
    cdp, base, _, _ = known_app
    cdp.open(f"{base}/?view=overview", ["yarn (factor=8)", "lat", "Mean win rate"])
    needle = _table(cdp, "yarn (factor=4)")
    col = {h: i for i, h in enumerate(needle["head"])}
    assert [r[col["configuration"]] for r in needle["rows"]] == NEEDLE_ORDER  # two configurations: two rows
    assert needle["rows"][0][col["seeds"]] == "3" and needle["rows"][0][col["Accuracy (fraction)"]] == "0.900"
    assert [r[col["rank"]] for r in needle["rows"]] == ["1", "2", "3", "4"]
    black, grey2, grey3, black4 = needle["rank_colours"]
    assert grey2 == grey3 != black == black4  # ranks 2 and 3: intervals overlap, drawn grey
    lat = _table(cdp, "b")
    assert [r[1] for r in lat["rows"]] == LAT_ORDER


def test_url_round_trip_in_chromium(known_app, tmp_path):
    cdp, base, _, _ = known_app
    text = cdp.open(f"{base}/?view=overview&method=yarn&method=pi", ["yarn (factor=8)", "records match the filters"])
    assert "baseline" not in [r[1] for r in _table(cdp, "yarn (factor=4)")["rows"]]
    assert "5 of 15 records match the filters" in text  # yarn's 3 + 1 runs and pi's 1
    assert "method=yarn" in cdp.url() and "method=pi" in cdp.url()  # the URL keeps the filters
    # change the view in the page: the URL follows, and opening that URL gives the same view
    cdp.js(
        "Array.from(document.querySelectorAll('[data-testid=\"stSidebar\"] label'))"
        ".find(l => l.innerText.trim() === 'Task').click()"
    )
    end = time.time() + chromium.DEADLINE_S
    while "view=task" not in cdp.url() and time.time() < end:
        time.sleep(0.3)
    shared = cdp.url()
    assert "view=task" in shared and "method=yarn" in shared and "show=needle" in shared
    cdp.call("Page.navigate", url="about:blank")
    text = cdp.open(shared, ["Needle accuracy by context length and depth", "Rank by"])
    assert "baseline" not in [r[1] for r in _table(cdp, "yarn (factor=4)")["rows"]]
    assert cdp.url() == shared
    cdp.screenshot(tmp_path / "shared.png")


def test_compare_view_and_p_value_text_in_chromium(known_app, tmp_path):
    cdp, base, root, _ = known_app
    lat = {r.method: r for r in loader.load(root).runs if r.task == "lat"}
    url = f"{base}/?view=compare&a={lat['b'].run_id}&b={lat['a'].run_id}&metric=latency"
    text = cdp.open(url, ["paired bootstrap", "Per-sample differences"])
    assert "p < 0.0001 (1/B, B = 10,000 resamples)" in text and "p = 0;" not in text
    assert cdp.js("document.querySelectorAll('.vega-embed').length") >= 1  # the histogram of b − a
    cdp.screenshot(tmp_path / "compare.png")


def test_needle_heatmap_and_chart_meaning_in_chromium(known_app, tmp_path):
    cdp, base, _, _ = known_app
    text = cdp.open(f"{base}/?view=task&show=needle", ["Needle accuracy by context length and depth, per method"])
    end = time.time() + 60
    while cdp.js("document.querySelectorAll('.vega-embed svg, .vega-embed canvas').length") < 2 and time.time() < end:
        time.sleep(0.3)
    facets = cdp.js(
        "Array.from(document.querySelectorAll('.vega-embed svg .role-title-text, .vega-embed svg .role-header-label text'))"
        ".map(t => t.textContent)"
    )
    assert set(NEEDLE_ORDER) <= set(facets), facets
    assert text.count("higher is better") >= 3 and "fraction of needles retrieved" in text
    cdp.screenshot(tmp_path / "needle.png")


def test_csv_download_in_chromium(known_app):
    cdp, base, _, downloads = known_app
    cdp.open(f"{base}/?view=overview&task=lat&method=b&method=c", ["Download the filtered table as CSV"])
    cdp.js(
        "Array.from(document.querySelectorAll('[data-testid=\"stDownloadButton\"] button'))"
        ".find(b => b.innerText.includes('CSV')).click()"
    )
    target = downloads / "leaderboard.csv"
    end = time.time() + 60
    while not target.is_file() and time.time() < end:
        time.sleep(0.2)
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [(r["task"], r["configuration"], r["rank"]) for r in rows] == [("lat", "b", "1"), ("lat", "c", "2")]
    assert rows[1]["method_params"] == "note=" + HOSTILE_NOTE


def test_forty_methods_legend_in_full_with_distinct_marks_in_chromium(tmp_path):
    path = _browser()
    root = tmp_path / "forty"
    for i in range(40):
        ms = {f"accuracy@{n}": metric(i / 40 / k) for n, k in ((512, 1), (1024, 2), (2048, 4))}
        put(root, record("passkey", f"method{i:02d}_with_a_longer_name", ms, "accuracy@512"))
    with chromium.leaderboard_server(root) as (base, _, _up), chromium.chromium_page(path) as cdp:
        cdp.open(f"{base}/?view=task&show=passkey", ["Metrics by number", "fraction of passkeys"])
        end = time.time() + 60
        while cdp.js("document.querySelectorAll('.vega-embed svg .role-legend-label text').length") < 40:
            assert time.time() < end, "the legend never listed 40 entries"
            time.sleep(0.3)
        legend = cdp.js(
            """(() => {
              const svg = document.querySelector('.vega-embed svg');
              const box = document.querySelector('.vega-embed').getBoundingClientRect();
              const labels = Array.from(svg.querySelectorAll('.role-legend-label text'));
              const marks = Array.from(svg.querySelectorAll('.role-legend-symbol path'))
                .map(p => (p.getAttribute('fill') || p.style.fill) + ' ' + p.getAttribute('d'));
              const shown = labels.every(t => { const r = t.getBoundingClientRect();
                return r.bottom <= box.bottom + 1 && r.right <= box.right + 1 && r.width > 0; });
              return {labels: labels.map(t => t.textContent), marks, shown};
            })()"""
        )
        cdp.screenshot(tmp_path / "forty.png")
    assert sorted(legend["labels"]) == [f"method{i:02d}_with_a_longer_name" for i in range(40)]  # none cut
    assert len(set(legend["marks"])) == 40  # every entry a distinct colour-and-marker pair
    assert legend["shown"], "a legend entry lies outside the chart's box (cut off)"


def test_hostile_record_text_stays_text_in_chromium(known_app):
    cdp, base, _, _ = known_app
    text = cdp.open(f"{base}/?view=overview&task=evil", ["onerror"])
    assert "<img src=x onerror=alert(1)>**bold**[link](javascript:alert(1))" in text  # literally
    made = cdp.js(
        "[document.querySelectorAll('img[src=\"x\"]').length, document.querySelectorAll('a[href^=\"javascript\"]').length,"
        " Array.from(document.querySelectorAll('strong')).filter(s => s.innerText === 'bold').length, !!window.__alerted]"
    )
    assert made == [0, 0, 0, False]
    text = cdp.open(f"{base}/?view=run&task=evil", ["Samples", "onerror"])
    assert cdp.js("document.querySelectorAll('img[src=\"x\"]').length") == 0 and not cdp.js("!!window.__alerted")
