"""The leaderboard: loader and schema (pure reader, hostile files skipped and counted), per-task
plots from the record shapes of every family, and the tables. The Streamlit views:
test_leaderboard_app.py."""

import pytest

from harness import gate
from harness.leaderboard import loader, plots, tables
from harness.leaderboard.schema import Schema
from tests import leaderboard_data
from tests.leaderboard_data import EVIL, committed_count, hostile, metric, put, record

results = leaderboard_data.results  # the fixture the leaderboard test files share


def test_loader_skips_and_counts_hostile_files(results, tmp_path):
    expected = hostile(results, tmp_path / "outside")
    res = loader.load(results)
    assert dict(res.skip_counts()) == expected
    assert len(res.runs) == committed_count() + 2 + 4 + 2 + 6  # committed + kv + spec + bon + vbench
    assert not any("outside" in r.path or "junk" in r.path for r in res.runs)


def test_schema_and_fallback_for_unknown_metrics():
    schema = Schema.load()
    acc = schema.metric("accuracy@1024")
    assert (acc.display, acc.direction, acc.number, acc.base) == ("Accuracy @ 1024", "higher", 1024, "accuracy")
    unknown = schema.metric("frobnication", {"direction": "lower", "unit": "ms"})
    assert (unknown.display, unknown.direction, unknown.unit) == ("frobnication", "lower", "ms")
    assert schema.metric("ppl_ratio", {"direction": "lower"}).direction == "lower"  # the record's, as declared
    info = schema.metric("needle_accuracy@dense", {"direction": "higher"})
    assert info.display == "Needle accuracy (query-agnostic) (at dense)" and "compressed" in info.description
    assert schema.metric("accuracy", {"direction": "higher"}, "needle").description.startswith("fraction of needles")
    assert schema.metric("frobnication", {}).declared is False
    assert schema.task("vbench_temporal_flickering")["plots"] == ["vbench_radar"]
    rec = {"main_metric": "accuracy", "metrics": {"needle_accuracy": {}, "accuracy": {}}}
    assert schema.main_metric("kv_compression", rec) == "needle_accuracy_at_memory"  # declared here, though absent
    assert schema.main_metric("unknown_task", rec) == "accuracy"
    assert schema.main_metric("unknown_task", {"main_metric": "gone", "metrics": {"accuracy": {}}}) == "gone"
    assert schema.main_metric("unknown_task", {"metrics": {"x": {}, "accuracy": {}}}) == "x"  # declares none


def test_a_record_without_its_main_metric_is_listed_unranked_not_ranked_on_its_first_metric(tmp_path):
    """kv_compression leaves needle_accuracy_at_memory out where no row fits rank_bytes (gear's 4-bit
    row): that configuration is listed last, rank —, with a note; the others rank on the metric."""
    root = tmp_path / "r"
    for method, acc in (("snapkv", 0.5), ("kivi", 1.0), ("gear", None)):
        ms = {"kept_fraction": metric(0.25, "lower"), "needle_accuracy": metric(0.9)}  # gear's first: 0.25
        if acc is not None:
            ms["needle_accuracy_at_memory"] = metric(acc)
        ranked_row = {"budget": "0.25", "kv_bytes_fraction": 0.25} if acc is not None else None
        rec = record("kv_compression", method, ms, "needle_accuracy_at_memory", details={"ranked_row": ranked_row})
        put(root, rec)
    put(root, record("lat", "a", {"ms": metric(2.0, "lower"), "other": metric(1.0)}, "latency"))
    runs = loader.load(root).runs
    gear = next(r for r in runs if r.method == "gear")
    assert (gear.main_metric, gear.main_value) == ("needle_accuracy_at_memory", None)
    boards = {b.bench: b for b in tables.overview(runs, Schema.load())}
    kv = boards["kv_compression"]
    assert kv.metric == "needle_accuracy_at_memory"
    assert [(r["configuration"], r["rank"], r["value"]) for r in kv.table] == [
        ("kivi", 1, 1.0),
        ("snapkv", 2, 0.5),
        ("gear", None, None),
    ]
    assert "| — | gear |" in kv.markdown()
    assert any("not ranked" in n and "gear" in n for n in kv.notes)
    lat = boards["lat"]  # declared by the record alone, and absent: unranked too
    assert lat.metric == "latency" and [r["rank"] for r in lat.table] == [None]


def test_ranking_direction_seeds_and_win_rate(tmp_path):
    root = tmp_path / "r"
    for method, v in (("a", 3.0), ("b", 1.0), ("c", 2.0)):
        put(root, record("lat", method, {"ms": metric(v, "lower")}, "ms", family="kv"))
    put(root, record("lat", "c", {"ms": metric(4.0, "lower")}, "ms", family="kv", seed=1))
    put(root, record("lat", "baseline", {"ms": metric(2.5, "lower")}, "ms", family="baseline"))
    schema = Schema.load()
    [board] = tables.overview(loader.load(root).runs, schema)
    assert [r["configuration"] for r in board.table] == ["b", "baseline", "a", "c"]  # c: mean of 2.0, 4.0 = 3.0
    assert next(r for r in board.table if r["configuration"] == "c")["seeds"] == 2
    wr = {r["configuration"]: r["mean win rate"] for r in tables.win_rates([board])}
    assert wr["b"] == 1.0 and wr["baseline"] == pytest.approx(2 / 3) and wr["a"] == pytest.approx((0 + 0.5) / 3)


def test_plots_render_every_family_and_skip_with_a_note(results):
    schema = Schema.load()
    runs = loader.load(results).runs
    by_task = lambda pred: [r for r in runs if pred(r.task)]
    cases = {
        "needle_heatmap": by_task(lambda t: t == "needle"),
        "by_number": by_task(lambda t: t == "passkey"),
        "kv_pareto": by_task(lambda t: t == "kv_compression"),
        "spec_bars": by_task(lambda t: t == "spec_acceptance"),
        "best_of_n": by_task(lambda t: t == "math_prm_bon"),
        "vbench_radar": by_task(lambda t: t.startswith("vbench")),
    }
    for kind, rs in cases.items():
        assert rs, kind
        chart, note, *_ = plots.BUILDERS[kind](rs, schema)
        assert chart is not None and note is None, (kind, note)
        spec = chart.to_dict()
        assert spec.get("datasets") or spec.get("data"), kind
        empty, why, *_ = plots.BUILDERS[kind](
            cases["spec_bars"] if kind != "spec_bars" else cases["needle_heatmap"], schema
        )
        assert empty is None and why, kind
    assert plots.plots_for("kv_compression", cases["kv_pareto"], schema) == ["kv_pareto"]
    assert plots.plots_for("some_new_task", cases["needle_heatmap"], schema) == ["needle_heatmap", "by_number"]


def test_pareto_front_keeps_only_undominated_points():
    pts = [(0.1, 0.5), (0.25, 0.4), (0.5, 0.8), (0.75, 0.7), (1.0, 0.9)]
    assert plots._pareto(pts, higher=True) == [(0.1, 0.5), (0.5, 0.8), (1.0, 0.9)]
    assert plots._pareto([(0.1, 2.0), (0.5, 1.5), (0.7, 1.8)], higher=False) == [(0.1, 2.0), (0.5, 1.5)]


def test_compare_pairs_samples_and_reuses_the_gate_tests(tmp_path):
    root = tmp_path / "r"
    a_s = [{"id": f"s{i}", "score": 1.0 if i < 30 else 0.0, "prediction": "x"} for i in range(40)]
    b_s = [{"id": f"s{i}", "score": 1.0 if i < 12 else 0.0, "prediction": EVIL} for i in range(40)]
    put(root, record("needle", "a", {"accuracy": metric(0.75, sample_field="score")}, "accuracy"), a_s)
    put(root, record("needle", "b", {"accuracy": metric(0.3, sample_field="score")}, "accuracy"), b_s)
    res = loader.load(root)
    a, b = res.runs
    sa, sb = loader.load_samples(root, a)[0], loader.load_samples(root, b)[0]
    c = tables.compare(a, b, sa, sb, "accuracy")
    assert c.test == "McNemar (exact)" and c.n_paired == 40 and len(c.changed) == 18
    assert c.p_value == gate.mcnemar_p([s["score"] for s in a_s], [s["score"] for s in b_s]) < 0.001
    cont = tables.compare(a, b, [dict(s, score=s["score"] + 0.1 * i) for i, s in enumerate(sa)], sb, "accuracy")
    assert cont.test == "paired bootstrap"


def test_compare_reads_each_configurations_own_sample_field(tmp_path):
    """A derived main metric (kv_compression's needle accuracy at equal memory) names another row's
    per-sample field in each configuration: a token method's 0.25 row against a quantizer's native
    row. Each side is read from its own field (before, B's samples were looked up under A's field,
    none matched, and the compare view showed no paired test)."""
    root = tmp_path / "r"
    a_s = [{"id": f"s{i}", "hit@0.25": 1.0 if i < 5 else 0.0} for i in range(20)]
    b_s = [{"id": f"s{i}", "hit@native": 1.0 if i < 15 else 0.0} for i in range(20)]
    put(root, record("needle", "a", {"at_memory": metric(0.25, sample_field="hit@0.25")}, "at_memory"), a_s)
    put(root, record("needle", "b", {"at_memory": metric(0.75, sample_field="hit@native")}, "at_memory"), b_s)
    a, b = loader.load(root).runs
    c = tables.compare(a, b, loader.load_samples(root, a)[0], loader.load_samples(root, b)[0], "at_memory")
    assert c.n_paired == 20 and len(c.changed) == 10 and c.p_value is not None


def test_directions_come_from_the_records_and_every_shown_metric_is_described():
    """One source for a metric's direction: the task that computed it, in the record (schema.yaml
    declares none), and the committed records agree on it per metric name. Every main metric and
    every metric a plot draws from the committed records has the schema's one-line description."""
    import yaml

    from harness.leaderboard.schema import SCHEMA_FILE
    from tests.leaderboard_data import ROOT

    data = yaml.safe_load(SCHEMA_FILE.read_text())
    assert [k for k, e in data["metrics"].items() if "direction" in e] == []
    runs = loader.load(ROOT / "results").runs
    seen: dict[str, set] = {}
    for r in runs:
        for name, m in r.record["metrics"].items():
            seen.setdefault(name, set()).add(m.get("direction"))
    assert {n: d for n, d in seen.items() if len(d) != 1 or not d <= {"higher", "lower"}} == {}
    schema = Schema.load()
    shown = {(r.main_metric, r.task) for r in runs}
    for task in {r.task for r in runs}:
        mine = [r for r in runs if r.task == task]
        for kind in plots.plots_for(task, mine, schema):
            plot = plots.BUILDERS[kind](mine, schema)
            if plot.chart is not None:
                shown |= {(name, task) for name, _ in plot.metrics}
    undescribed = sorted(
        (name, task) for name, task in shown if not schema.metric(name, {"direction": "higher"}, task).description
    )
    assert undescribed == []


def test_every_task_s_declared_main_metric_is_in_its_committed_records():
    """A board ranks by the schema's main metric: one its records do not hold leaves the whole
    board unranked (spec_acceptance declared `tau`, its records carry tau@T0 and tau@T1)."""
    from tests.leaderboard_data import ROOT

    schema, held = Schema.load(), {}
    for r in loader.load(ROOT / "results").runs:
        held.setdefault(r.task, set()).update(r.record["metrics"])
    declared = {t: schema.task(t).get("main_metric") for t in held}
    assert {t: m for t, m in declared.items() if m and m not in held[t]} == {}
    spec = [r for r in loader.load(ROOT / "results").runs if r.task == "spec_acceptance"]
    ranked = [row for b in tables.overview(spec, schema) for row in b.table if row["rank"] is not None]
    assert len(ranked) >= 10  # every lossless decoder of grids/spec.yaml; co_llm unranked


def test_a_lossy_decoder_is_unranked_on_tau_by_its_own_records_whatever_its_name(tmp_path):
    """τ of a decoder whose greedy output differs from the target's counts tokens the target never
    verified: the schema's `unranked_below` reads that from the records (lossless_greedy < 1), so
    a user's own lossy method is not ranked either, while a lossless one with a lower τ is."""
    for method, tau, lossless in (("my_lossy", 9.0, 0.0), ("sps", 2.0, 1.0), ("eagle", 2.5, 1.0)):
        ms = {"tau@T0": metric(tau, "higher", n=8), "lossless_greedy": metric(lossless, "higher", n=8)}
        put(tmp_path, record("spec_acceptance", method, ms, "tau@T0", family="spec"))
    rows = tables.ranked(loader.load(tmp_path).runs, Schema.load(), "tau@T0")
    assert [(r["method"], r["rank"]) for r in rows] == [("eagle", 1), ("sps", 2), ("my_lossy", None)]
    assert "lossless_greedy < 1" in rows[-1]["degenerate"]
    assert not rows[0]["degenerate"] and not rows[1]["degenerate"]


def test_the_spec_report_and_the_leaderboard_call_the_same_records_lossy():
    """The spec report lists a lossy decoder last (tasks._spec_report.LOSSY) and the leaderboard's
    schema leaves it unranked on τ (`unranked_below`): one rule, stated twice, held equal here."""
    from tasks._spec_report import LOSSY, lossy

    info = Schema.load().metric("tau@T0", {"direction": "higher"})
    assert LOSSY in [(m, b) for m, b, _ in info.unranked_below]
    for values in ([1.0, 1.0], [1.0, 0.75], [0.0], [], [None], ["n/a", 1.0]):
        recs = [{"metrics": {"lossless_greedy": {"value": v}}} for v in values] + [{"metrics": {}}]
        assert (
            lossy(recs) == (info.unranked_for(recs) is not None) == any(isinstance(v, float) and v < 1 for v in values)
        ), values


def test_preload_hands_the_records_to_the_first_session_without_waiting_for_the_rest(results, monkeypatch):
    """`harness leaderboard` parses the records while its server starts (harness.leaderboard.serve):
    the app's first load takes them as soon as the parse is done, not after the later imports."""
    import os
    import threading
    import time

    from harness import commands

    release = threading.Event()

    def warm(root):
        loader.preload(root)
        release.wait(30)  # stands for the slower imports that follow the parse

    loader.preload_in_background(results, warm)
    t0 = time.perf_counter()
    got = loader.preloaded(results)
    assert got is not None and len(got.runs) == committed_count() + 14 and time.perf_counter() - t0 < 25
    assert loader.preloaded(results) is None  # handed out once: later loads read the folder again
    release.set()
    seen = {}
    monkeypatch.setattr(os, "execve", lambda exe, cmd, env: seen.update(cmd=cmd, env=env))
    commands.cmd_leaderboard(type("A", (), {"results": str(results), "port": 8599, "address": "127.0.0.1"})())
    assert seen["cmd"][1:4] == ["-m", "harness.leaderboard.serve", "run"] and seen["env"]["HARNESS_RESULTS"]
