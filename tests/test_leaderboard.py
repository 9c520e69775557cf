"""The leaderboard: loader and schema (pure reader, hostile files skipped and counted), per-task
plots from the record shapes of every family, the tables, and every Streamlit view under AppTest."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from harness import gate, records
from harness.leaderboard import loader, plots, tables
from harness.leaderboard.schema import Schema

ROOT = Path(__file__).resolve().parents[1]
APP = str(Path(loader.__file__).with_name("app.py"))
EVIL = "<img src=x onerror=alert(1)>**bold**[link](javascript:alert(1))"


def record(
    task,
    method,
    metrics,
    main,
    family="kv",
    params=None,
    details=None,
    model="zoo:tiny-llama",
    seed=0,
    kind="lm",
    calibrated=True,
):
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": records.sha256_text(f"{task}{method}{params}{seed}{model}")[:16],
        "task": {"name": task, "version": "1", "params": params or {}, "alias": None},
        "method": {"name": method, "params": {}, "components": [{"name": method, "kind": kind, "family": family}]},
        "model": {"id": model, "zoo": model.startswith("zoo:"), "label": "tiny"},
        "seed": seed,
        "limit": None,
        "main_metric": main,
        "metrics": metrics,
        "details": details or {},
        "provenance": {"calibrated": calibrated, "started": "2026-11-26T00:00:00+00:00", "git_commit": "abc"},
    }


def metric(value, direction="higher", unit="", sample_field=None, n=10):
    m = {"value": value, "direction": direction, "unit": unit, "n": n}
    return dict(m, sample_field=sample_field) if sample_field else m


def put(root: Path, rec: dict, samples=None):
    path = records.record_path(
        root, {"task": rec["task"], "model": rec["model"], "method": rec["method"]}, rec["run_id"]
    )
    records.write(path, rec, samples or [{"id": f"s{i}", "score": 1.0} for i in range(3)])
    return path


def family_records(root: Path) -> None:
    """One record shape per family, as inferred from the issues (kv 4, spec 5, prm 7, video 8)."""
    for method, q in (("snapkv", 0.9), ("streaming_llm", 0.6)):
        pareto = [
            {
                "budget": b,
                "kept_fraction": b,
                "needle_accuracy": min(1.0, q * (0.5 + b)),
                "ppl_ratio": 1 + (1 - b) * (1.2 - q),
            }
            for b in (0.1, 0.25, 0.5, 0.75)
        ]
        put(
            root,
            record(
                "kv_compression",
                method,
                {
                    "needle_accuracy": metric(q),
                    "kept_fraction": metric(0.25, "lower"),
                    "ppl_ratio": metric(1.1, "lower"),
                },
                "needle_accuracy",
                details={"pareto": pareto},
            ),
        )
    for method, tau in (("sps", 2.4), ("autoregressive", 1.0)):
        for temp in (0, 1):
            put(
                root,
                record(
                    "spec_acceptance",
                    method,
                    {"tau": metric(tau - temp * 0.2), "speedup": metric(tau / 1.5), "acceptance_rate": metric(0.6)},
                    "tau",
                    family="spec",
                    params={"temperature": temp},
                ),
            )
    for method, base in (("prm_min", 0.4), ("majority", 0.35)):
        ms = {}
        for n in (1, 2, 4, 8):
            ms[f"accuracy@{n}"] = metric(base + 0.05 * n)
            ms[f"majority@{n}"] = metric(0.3 + 0.03 * n)
            ms[f"pass@{n}"] = metric(0.5 + 0.05 * n)
        put(
            root,
            record(
                "math_prm_bon",
                method,
                ms,
                "accuracy@8",
                family="prm",
                kind="step_scorer",
                model="none",
                calibrated=method != "prm_min",
            ),
        )
    for method, s in (("synthetic_videos", 0.9), ("noisy_videos", 0.5)):
        for dim in ("temporal_flickering", "subject_consistency", "dynamic_degree_proxy"):
            put(
                root,
                record(
                    f"vbench_{dim}", method, {dim: metric(s)}, dim, family="video", kind="video_source", model="none"
                ),
            )


COPIED = ("needle", "passkey", "perplexity")  # committed long-context records; the other families'
# shapes come from family_records, so counts stay fixed


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for task in COPIED:
        shutil.copytree(ROOT / "results" / task, root / task)
    family_records(root)
    return root


def committed_count() -> int:
    return sum(1 for t in COPIED for p in (ROOT / "results" / t).rglob("*.json"))


def hostile(root: Path, outside: Path) -> dict[str, int]:
    """Every kind of bad file; returns the expected skip count per reason."""
    bad = root / "needle" / "junk"
    bad.mkdir(parents=True)
    good = next((ROOT / "results").rglob("*.json")).read_text()
    (bad / "truncated.json").write_text(good[: len(good) // 2])
    (bad / "old.json").write_text(good.replace('"schema_version": 1', '"schema_version": 0'))
    (bad / "binary.json").write_bytes(bytes(range(256)) * 64)
    with open(bad / "huge.json", "wb") as f:  # sparse: never read, refused by its size
        f.truncate(loader.MAX_RECORD_BYTES + 1)
    (bad / "list.json").write_text("[1, 2, 3]")
    (bad / "shape.json").write_text(json.dumps(dict(json.loads(good), metrics={"accuracy": 3})))
    outside.mkdir(exist_ok=True)
    (outside / "secret.json").write_text(good)
    os.symlink(outside / "secret.json", bad / "link.json")
    os.symlink(outside, bad / "linked_folder")
    (bad / ".r.json.abc.tmp").write_text(good[:100])
    (bad / "notes.txt").write_text(EVIL)
    return {
        "not JSON": 1,
        "schema version": 1,
        "binary": 1,
        "too large": 1,
        "not a record": 1,
        "malformed record": 1,
        "symlink": 2,
        "temporary file": 1,
        "foreign file": 1,
    }


def test_loader_skips_and_counts_hostile_files(results, tmp_path):
    expected = hostile(results, tmp_path / "outside")
    res = loader.load(results)
    assert dict(res.skip_counts()) == expected
    assert len(res.runs) == committed_count() + 2 + 4 + 2 + 6  # committed + kv + spec + bon + vbench
    assert not any("outside" in r.path or "junk" in r.path for r in res.runs)


def test_loader_and_app_never_write(results, tmp_path):
    hostile(results, tmp_path / "outside")

    def snapshot():
        return {
            str(p): (
                p.lstat().st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "",
            )
            for p in results.rglob("*")
        }

    before = snapshot()
    loader.load(results)
    at = app_test(results)
    for view in ("task", "run", "compare"):
        at.sidebar.radio(key="view").set_value(view).run()
    assert snapshot() == before


def test_schema_and_fallback_for_unknown_metrics():
    schema = Schema.load()
    acc = schema.metric("accuracy@1024")
    assert (acc.display, acc.direction, acc.number, acc.base) == ("Accuracy @ 1024", "higher", 1024, "accuracy")
    unknown = schema.metric("frobnication", {"direction": "lower", "unit": "ms"})
    assert (unknown.display, unknown.direction, unknown.unit) == ("frobnication", "lower", "ms")
    assert schema.metric("ppl_ratio", {"direction": "higher"}).direction == "lower"  # the schema wins
    assert schema.task("vbench_temporal_flickering")["plots"] == ["vbench_radar"]
    rec = {"main_metric": "accuracy", "metrics": {"needle_accuracy": {}, "accuracy": {}}}
    assert schema.main_metric("kv_compression", rec) == "needle_accuracy"
    assert schema.main_metric("unknown_task", rec) == "accuracy"


def test_ranking_direction_seeds_and_win_rate(tmp_path):
    root = tmp_path / "r"
    for method, v in (("a", 3.0), ("b", 1.0), ("c", 2.0)):
        put(root, record("lat", method, {"ms": metric(v, "lower")}, "ms", family="kv"))
    put(root, record("lat", "c", {"ms": metric(4.0, "lower")}, "ms", family="kv", seed=1))
    put(root, record("lat", "baseline", {"ms": metric(2.5, "lower")}, "ms", family="baseline"))
    schema = Schema.load()
    [board] = tables.overview(loader.load(root).runs, schema)
    assert list(board.table["method"]) == ["b", "baseline", "a", "c"]  # c: mean of 2.0 and 4.0 = 3.0, ties a
    assert board.table.set_index("method").loc["c", "seeds"] == 2
    wr = tables.win_rates([board]).set_index("method")["mean win rate"]
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
        chart, note = plots.BUILDERS[kind](rs, schema)
        assert chart is not None and note is None, (kind, note)
        spec = chart.to_dict()
        assert spec.get("datasets") or spec.get("data"), kind
        empty, why = plots.BUILDERS[kind](
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


def app_test(root):
    from streamlit.testing.v1 import AppTest

    os.environ["HARNESS_RESULTS"] = str(root)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def plain(text: str) -> str:
    """Markdown-escaped text as the page shows it."""
    return re.sub(r"\\(.)", r"\1", text)


def _texts(at) -> str:
    parts = [
        e.value
        for kind in ("title", "header", "subheader", "caption", "markdown", "text", "warning", "info")
        for e in getattr(at, kind)
    ]
    return "\n".join(map(str, parts))


@pytest.fixture
def app_results(results, tmp_path):
    expected = hostile(results, tmp_path / "outside")
    needle = json.loads(next((ROOT / "results" / "needle").rglob("*.json")).read_text())["task"]["params"]
    put(
        results,
        record(
            "needle",
            EVIL,
            {"accuracy": metric(0.5, sample_field="score")},
            "accuracy",
            params=dict(needle, context_length=[512]),
        ),
        [{"id": "s0", "score": 1.0, "prediction": EVIL}],
    )
    return results, expected


def test_app_overview(app_results):
    root, expected = app_results
    at = app_test(root)
    [warning] = at.warning
    assert f"{sum(expected.values())} file(s)" in plain(warning.value) and "symlink" in warning.value
    heads = [plain(s.value) for s in at.subheader]
    for task in (
        "kv_compression",
        "spec_acceptance [temperature=0]",
        "math_prm_bon",
        "vbench_temporal_flickering",
        "passkey",
    ):  # several committed variants get a [label]
        assert any(h == task or h.startswith(task + " [") for h in heads), (task, heads)
    assert "Mean win rate per method family" in heads
    assert any("not for real LLMs" in c.value for c in at.caption)
    table = at.table[0].value
    assert list(table.columns[:2]) == ["method", "family"]
    # record text never becomes markup: no element allows HTML, and markdown carries it escaped
    assert not any(getattr(m.proto, "allow_html", False) for m in at.markdown)
    assert "<img" not in _texts(at).replace("\\<img", "")
    # filters narrow every table
    at.sidebar.multiselect(key="f_method").set_value(["yarn"]).run()
    assert all(set(t.value["method"]) == {"yarn"} for t in at.table)


def test_app_task_view_draws_each_family_plot(app_results):
    root, _ = app_results
    at = app_test(root)
    at.sidebar.radio(key="view").set_value("task").run()
    wanted = {
        "needle": "Needle accuracy by context length and depth",
        "kv_compression": "Quality versus kept KV fraction",
        "spec_acceptance": "Speculative decoding: τ and speedup",
        "math_prm_bon": "Best-of-N accuracy versus N",
        "vbench_subject_consistency": "VBench dimensions",
    }
    for task, title in wanted.items():
        at.selectbox(key="task_pick").set_value(task).run()
        assert not at.exception
        assert title in [s.value for s in at.subheader], task
    # a single VBench dimension per method is too few for a radar: skipped with a note, not a crash
    at.sidebar.multiselect(key="f_task").set_value(["vbench_subject_consistency"]).run()
    assert any("Plot skipped" in c.value for c in at.caption)


def test_app_run_detail_and_samples(app_results):
    root, _ = app_results
    at = app_test(root)
    at.sidebar.radio(key="view").set_value("run").run()
    labels = at.selectbox(key="run_pick").options
    evil = next(i for i, label in enumerate(labels) if "onerror" in label)
    at.selectbox(key="run_pick").set_value(evil).run()
    assert not at.exception
    assert any("provenance.git_commit" in str(df.value.values) for df in at.dataframe)
    assert json.loads(at.json[-1].value)["prediction"] == EVIL  # shown as JSON text, not markup
    at.text_input(key="sample_filter").input("nothing-matches").run()
    assert not at.exception


def test_app_compare_view(app_results):
    root, _ = app_results
    at = app_test(root)
    at.sidebar.radio(key="view").set_value("compare").run()
    labels = at.selectbox(key="cmp_a").options
    ia = next(
        i
        for i, label in enumerate(labels)
        if label.startswith("needle [context_length=512,1024,2048") and "· yarn ·" in label
    )
    ib = next(
        i
        for i, label in enumerate(labels)
        if label.startswith("needle [context_length=512,1024,2048") and "· pi ·" in label
    )
    at.selectbox(key="cmp_a").set_value(ia).run()
    at.selectbox(key="cmp_b").set_value(ib).run()
    text = "\n".join(t.value for t in at.text)
    assert "McNemar (exact)" in text and "paired on 150 shared samples" in text and "significant at 0.05" in text


def test_leaderboard_command_refuses_a_missing_results_folder(tmp_path, capsys):
    from harness.cli import main

    assert main(["leaderboard", "--results", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
