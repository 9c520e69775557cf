"""CLI behaviour: user errors exit 2 with one clear message; resume; list."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import registry
from harness.cli import main
from harness.interfaces import Method


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def eval_args(model, out, *extra):
    return [
        "eval",
        "--model",
        model,
        "--out",
        str(out),
        "--no-progress",
        "--task",
        "needle",
        "--task-arg",
        "context_length=160",
        "--task-arg",
        "depths=2",
        "--task-arg",
        "max_new_tokens=4",
        "--limit",
        "2",
        *extra,
    ]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["eval", "--task", "needle_1k", "--method", "yarnn"], "yarn"),
        (["eval", "--task", "needel", "--method", "yarn"], "needle"),
        (["eval", "--task", "needle", "--task-arg", "depths=ten"], "expected int"),
        (["eval", "--task", "needle", "--task-arg", "dept=3"], "depths"),
        (["eval", "--task", "needle", "--task-arg", "depths"], "key=value"),
        (["eval", "--task", "needle", "--method", "yarn", "--method-arg", "factor=big"], "expected float"),
        (["eval", "--task", "needle", "--method", "yarn", "--method-arg", "facto=2"], "factor"),
        (["eval", "--task", "needle", "--method", "pi+yarn"], "both patch rope"),
        (["eval", "--task", "needle", "--method", "yarn+"], "empty name"),
        (["eval", "--task", "needle", "--limit", "0"], "--limit"),
        (["eval", "--task", "needle", "--task-arg", "context_length=10"], "at least 64"),
        (["eval", "--task", "needle", "--model", "zoo:tiny-lama"], "tiny-llama"),
        (["eval", "--task", "needle", "--model", "nosuchmodel"], "unknown model"),
        (["eval", "--task", "needle", "--device", "tpu"], "--device"),
        (["eval", "--task", "needle", "--batch-size", "0"], "--batch-size"),
        (["zoo", "card", "nope"], "unknown zoo model"),
    ],
)
def test_user_errors_exit_2_with_one_message(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_wrong_kind_lists_compatible_methods(capsys):
    @registry.register
    @dataclass
    class FakeScorer(Method):
        """A step scorer used only by this test."""

        name = "fake_scorer_for_test"
        kind = "step_scorer"

    try:
        code, _, err = run(capsys, "eval", "--task", "needle", "--method", "fake_scorer_for_test")
        assert code == 2 and "kind 'step_scorer'" in err and "yarn" in err and "baseline" in err
    finally:
        registry.METHODS.pop("fake_scorer_for_test")


def test_missing_and_badly_encoded_files(capsys, tiny_model, tmp_path):
    missing = tmp_path / "no" / "such" / "file.txt"  # certainly absent, on any machine
    code, _, err = run(capsys, *eval_args(tiny_model, tmp_path, "--task-arg", f"haystack={missing}"))
    assert code == 2 and str(missing) in err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Fine first line.\nSecond line \xff\xfe broken.\n")
    code, _, err = run(capsys, *eval_args(tiny_model, tmp_path, "--task-arg", f"haystack={bad}"))
    assert code == 2 and "bad.txt line 2" in err
    assert not list(tmp_path.rglob("*.json")), "no record may be written for a failed cell"


def test_model_folder_with_pickle_weights_is_refused(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    code, _, err = run(capsys, "eval", "--task", "needle", "--model", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and "pickle" in err


def test_eval_writes_then_resumes_untouched(capsys, tiny_model, tmp_path):
    code, out, _ = run(capsys, *eval_args(tiny_model, tmp_path, "--method", "yarn"))
    assert code == 0 and "yarn" in out and "accuracy" in out
    (path,) = [p for p in tmp_path.rglob("*.json")]
    stat = path.stat()
    content = path.read_bytes()
    code, out, err = run(capsys, *eval_args(tiny_model, tmp_path, "--method", "yarn"))
    assert code == 0 and "cached" in out and "skip" in err
    assert path.read_bytes() == content and path.stat().st_mtime_ns == stat.st_mtime_ns
    code, out, _ = run(capsys, *eval_args(tiny_model, tmp_path, "--method", "yarn", "--overwrite"))
    assert code == 0 and path.stat().st_mtime_ns != stat.st_mtime_ns
    assert json.loads(path.read_text())["run_id"] == json.loads(content)["run_id"]


def test_cross_product_and_scoped_args(capsys, tiny_model, tmp_path):
    code, out, _ = run(
        capsys,
        *eval_args(tiny_model, tmp_path, "--method", "baseline", "--method", "yarn", "--method-arg", "yarn.factor=3"),
    )
    assert code == 0
    recs = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json")]
    assert sorted(r["method"]["name"] for r in recs) == ["baseline", "yarn"]
    yarn = next(r for r in recs if r["method"]["name"] == "yarn")
    assert yarn["method"]["params"]["yarn"]["factor"] == 3.0
    assert yarn["method"]["components"][0]["resolved"]["scale"] == 3.0


def test_progress_bars_name_their_cell_and_an_estimate_follows_each_cell(tiny_model, tmp_path):
    from harness import runner

    descs, logs = [], []

    def progress(items, total=None, desc=""):
        descs.append(desc)
        return iter(items)

    cells = runner.resolve(
        ["needle"],
        ["baseline", "yarn"],
        tiny_model,
        {"context_length": "160", "depths": "2", "max_new_tokens": "4"},
        {},
        0,
        2,
    )
    runner.evaluate(cells, device="cpu", out=tmp_path, progress=progress, log=logs.append)
    assert [d.split(":")[0] for d in descs] == ["[1/2] needle · baseline", "[2/2] needle · yarn"]
    assert all("(2 samples)" in d for d in descs)  # the task's own description follows
    assert len(logs) == 1 and logs[0].startswith("[1/2] needle · baseline done in ")
    assert logs[0].endswith("left for 1 more cell(s)")
    runner.evaluate(cells, device="cpu", out=tmp_path, progress=progress, log=logs.append)
    assert logs[1:] == [
        f"skip: {runner.locate(c, tmp_path)[2]} is finished (use --overwrite to rerun)" for c in cells
    ]  # finished cells: no bar, no estimate


def test_composition_runs_and_records_components(capsys, tiny_model, tmp_path):
    code, out, _ = run(capsys, *eval_args(tiny_model, tmp_path, "--method", "baseline+yarn"))
    assert code == 0
    (path,) = list(tmp_path.rglob("*.json"))
    rec = json.loads(path.read_text())
    assert [c["name"] for c in rec["method"]["components"]] == ["baseline", "yarn"]
    assert path.parent.name == "baseline+yarn"


def test_list_json_has_required_fields(capsys):
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    entries = json.loads(out)
    names = {e["name"] for e in entries}
    assert {"needle", "perplexity", "yarn", "baseline"} <= names
    for e in entries:
        assert {"name", "kind", "summary", "params"} <= set(e)
    yarn = next(e for e in entries if e["name"] == "yarn")
    assert yarn["paper"] and any(p["name"] == "beta_fast" and p["default"] == 32.0 for p in yarn["params"])
    code, out, _ = run(capsys, "list", "methods")
    assert code == 0 and "dynamic_ntk" in out and "rope" in out


def test_pickle_weights_load_only_with_explicit_opt_in(capsys, tiny_model, tmp_path):
    """A real .bin checkpoint: refused by default (exit 2, nothing written); --allow-pickle loads it
    and the record says which format ran."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    assert list(folder.glob("*.bin")) and not list(folder.glob("*.safetensors"))
    code, _, err = run(capsys, *eval_args(str(folder), tmp_path / "o"))
    assert code == 2 and "--allow-pickle" in err and not (tmp_path / "o").exists()
    code, out, _ = run(capsys, *eval_args(str(folder), tmp_path / "o", "--allow-pickle"))
    assert code == 0
    rec = json.loads(Path(out.split("record: ")[-1].strip()).read_text())
    assert rec["model"]["config"]["weights_format"].startswith("pickle")
    assert rec["provenance"]["model_sha256"]  # the pickle file's hash


def test_a_closed_output_pipe_ends_quietly_with_141():
    """`harness list methods | head -1`: the reader goes away before the output is written."""
    import subprocess
    import sys

    p = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "list", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # no reader: the first write fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err
