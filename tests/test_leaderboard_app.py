"""The leaderboard's Streamlit app under streamlit's AppTest, on the shared records with hostile
files and markup in names: it never writes, and the overview, task, run detail and compare views;
the CLI command's refusal."""

import hashlib
import json
import os

import pytest

from harness.leaderboard import loader
from tests import leaderboard_data
from tests.leaderboard_data import APP, EVIL, ROOT, boards, hostile, label, metric, plain, put, record

results = leaderboard_data.results  # the fixture the leaderboard test files share


def app_test(root):
    from streamlit.testing.v1 import AppTest

    os.environ["HARNESS_RESULTS"] = str(root)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(at) -> str:
    parts = [
        e.value
        for kind in ("title", "header", "subheader", "caption", "markdown", "text", "warning", "info")
        for e in getattr(at, kind)
    ]
    return "\n".join(map(str, parts))


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
    assert "not for real LLMs" in _texts(at)
    ranking = boards(at)
    assert ranking and all(list(rows[0])[:3] == ["rank", "configuration", "family"] for rows in ranking.values())
    # record text never becomes markup: no element allows HTML, and markdown carries it escaped
    assert not any(getattr(m.proto, "allow_html", False) for m in at.markdown)
    assert "<img" not in _texts(at).replace("\\<img", "")
    # filters narrow every table
    at.sidebar.multiselect(key="f_method").set_value(["yarn"]).run()
    ranking = boards(at)
    assert ranking and all({label(r).split(" (")[0] for r in rows} == {"yarn"} for rows in ranking.values())


def test_app_task_view_draws_each_family_plot(app_results):
    root, _ = app_results
    at = app_test(root)
    at.sidebar.radio(key="view").set_value("task").run()
    wanted = {
        "needle": "Needle accuracy by context length and depth, per method",
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
    at.selectbox(key="run_pick").select_index(evil).run()
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
    at.selectbox(key="cmp_a").select_index(ia).run()
    labels_b = at.selectbox(key="cmp_b").options
    ib = next(i for i, lab in enumerate(labels_b) if lab == labels[ib])
    at.selectbox(key="cmp_b").select_index(ib).run()
    text = "\n".join(t.value for t in at.text)
    # 150 needles per seed (3 lengths x 10 depths x 5), paired within each of the 3 seeds both ran
    assert "McNemar (exact)" in text and "significant at 0.05" in text
    assert "paired on 450 shared samples (seeds 0, 1, 2)" in text


def test_leaderboard_command_refuses_a_missing_results_folder(tmp_path, capsys):
    from harness.cli import main

    assert main(["leaderboard", "--results", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
