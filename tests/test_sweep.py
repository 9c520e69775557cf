"""harness sweep: grid expansion and validation (exit 2 naming the problem), the local process pool
(skip finished cells, retries, device pinning), the Slurm path through submitit against a real
one-node Slurm (tests/slurm_cluster.py) and through submitit's local executor, and the committed
grids that reproduce the committed reference records."""

import json
import os
from pathlib import Path

import pytest
import yaml

from harness import grid, records, runner, sweep
from harness.zoo import registry as zoo
from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
NEEDLE = {"context_length": 128, "depths": 1, "samples_per_depth": 1, "max_new_tokens": 4}


def grid_file(tmp_path, model, methods=("baseline", "pi"), seeds=(0,), **extra) -> Path:
    g = {
        "models": [model],
        "runs": [{"tasks": ["needle"], "methods": list(methods), "seeds": list(seeds), "task_args": NEEDLE, **extra}],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(g))
    return path


@pytest.mark.parametrize(
    "text,problem",
    [
        ("runs: [", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("runs: []\n", "'runs' must be a non-empty list"),
        ("runz: [{tasks: [needle], methods: [baseline]}]\n", "unknown key(s) ['runz']"),
        ("runs: [{tasks: [needle], methods: [yarnn]}]\n", "runs[0]: unknown method 'yarnn'"),
        ("runs: [{tasks: [needle], methods: [baseline], task_args: {context_length: abc}}]\n", "context_length"),
        ("runs: [{tasks: [needle], methods: [baseline], seeds: [a]}]\n", "seeds must be integers"),
        ("runs: [{tasks: [needle], methods: [baseline], grid: {depth: [1]}}]\n", "must start with task. or method."),
        ("runs: [{tasks: [needle], methods: baseline, frobnicate: 1}]\n", "unknown key(s) ['frobnicate']"),
        ("runs: [{tasks: [needle], methods: [baseline], batch_size: 0}]\n", "batch_size must be a positive"),
        ("batch_size: many\nruns: [{tasks: [needle], methods: [baseline]}]\n", "batch_size must be a positive"),
    ],
)
def test_bad_grid_exits_2_naming_the_problem(tmp_path, capsys, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert problem in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_grid_file_exits_2(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: cannot read" in capsys.readouterr().err


def test_expansion_crosses_grid_axes_and_matches_eval_paths(tiny_model, tmp_path):
    path = grid_file(
        tmp_path, tiny_model, methods=["baseline", "yarn"], seeds=[0, 1], grid={"method.yarn.factor": [2, 4]}
    )
    specs = grid.expand(grid.load_grid(path), path, str(tmp_path / "out"))
    # baseline ignores the yarn axis: its two copies per seed are the same cell and run once
    assert len(specs) == 2 * 1 + 2 * 2
    cell = runner.resolve(
        ["needle"], ["yarn"], tiny_model, {k: str(v) for k, v in NEEDLE.items()}, {"yarn.factor": "4"}, seed=1
    )[0]
    assert str(runner.locate(cell, tmp_path / "out")[2]) in {s.path for s in specs}


def test_batch_size_from_the_grid_or_its_block(tiny_model, tmp_path):
    """A 128k prompt at the default batch of 8 exceeds a 24 GiB machine's memory cap: a grid says
    `batch_size: auto` (or a number) at its top or per block, as eval's --batch-size."""
    g = yaml.safe_load(grid_file(tmp_path, tiny_model, methods=["baseline"]).read_text())
    g["batch_size"] = "auto"
    g["runs"].append({"tasks": ["needle"], "methods": ["yarn"], "batch_size": 2})
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump(g))
    specs = grid.expand(grid.load_grid(path), path, str(tmp_path / "out"))
    assert {(s.methods[0], s.batch_size) for s in specs} == {("baseline", "auto"), ("yarn", 2)}
    g.pop("batch_size")
    path.write_text(yaml.safe_dump(g))
    assert {s.batch_size for s in grid.expand(grid.load_grid(path), path, str(tmp_path / "out"))} == {8, 2}


def test_local_sweep_skips_finished_cells_on_rerun(tiny_model, tmp_path, capsys):
    path = grid_file(tmp_path, tiny_model, methods=["baseline", "pi"], seeds=[0, 1])
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    args = ["sweep", str(path), "--out", str(out), "--workers", "2", "--device", "cpu", "--summary", str(summary)]
    assert main(args) == 0
    first = json.loads(summary.read_text())
    assert (first["done"], first["skipped"], first["failed"]) == (4, 0, 0)
    for p in first["done_records"]:
        rec = records.read(Path(p))
        assert records.finished(Path(p), rec["run_id"]) and rec["provenance"]["threads"] >= 1
    mtimes = {p: Path(p).stat().st_mtime_ns for p in first["done_records"]}
    assert main(args) == 0
    second = json.loads(summary.read_text())
    assert (second["done"], second["skipped"], second["failed"]) == (0, 4, 0)
    assert {p: Path(p).stat().st_mtime_ns for p in first["done_records"]} == mtimes
    assert "4 skipped" in capsys.readouterr().out


# -- retries, failure reasons and device pinning with injected cell functions -------------------
def flaky_cell(spec):
    """Fails on its first attempt per cell (a marker file remembers), then succeeds."""
    marker = Path(spec.out) / f"{Path(spec.path).stem}.attempted"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("x")
        raise RuntimeError("transient failure")
    return {"status": "done", "path": spec.path, "device": os.environ.get("CUDA_VISIBLE_DEVICES")}


def always_failing_cell(spec):
    raise MemoryError("out of memory in cell")


def pinned_cell(spec):
    """Notes which worker process ran the cell and the device that worker was pinned to."""
    device = os.environ.get("CUDA_VISIBLE_DEVICES")
    Path(spec.path).with_suffix(".ran").write_text(f"{os.getpid()} {device}")
    return {"status": "done", "path": spec.path, "device": device}


def _specs(tmp_path, n):
    return [
        grid.Spec(
            ["needle"],
            ["baseline"],
            None,
            {},
            {},
            i,
            None,
            0,
            str(tmp_path),
            label=f"cell {i}",
            path=str(tmp_path / f"c{i}.json"),
        )
        for i in range(n)
    ]


def test_failures_are_retried_then_summarized_with_reasons(tmp_path):
    specs = _specs(tmp_path, 4)
    sweep.run_local(specs, workers=2, retries=1, devices=[], log=lambda m: None, fn=flaky_cell)
    for s in specs:
        assert s.attempts == 2 and s.reasons[-1] == "done", s.reasons
        assert s.reasons[0].startswith("RuntimeError: transient failure at test_sweep.py:"), s.reasons
    bad = _specs(tmp_path / "b", 3)
    sweep.run_local(bad, workers=2, retries=2, devices=[], log=lambda m: None, fn=always_failing_cell)
    summary = sweep.summarize(bad, [])
    assert summary["failed"] == 3 and all(f["attempts"] == 3 for f in summary["failures"])
    assert all(f["reason"].startswith("MemoryError: out of memory in cell") for f in summary["failures"])


def test_workers_are_pinned_to_one_device_each(tmp_path):
    """The pinning rule, whichever worker happens to take which cells (one may take them all):
    every cell runs pinned, a worker keeps one device, and two workers never share one."""
    seen = []
    specs = _specs(tmp_path, 8)
    sweep.run_local(specs, workers=2, retries=0, devices=["3", "5"], log=seen.append, fn=pinned_cell)
    assert len(seen) == 8 and all(s.reasons == ["done"] for s in specs)
    per_pid = {}
    for s in specs:
        pid, device = Path(s.path).with_suffix(".ran").read_text().split()
        per_pid.setdefault(pid, set()).add(device)
    assert set().union(*per_pid.values()) <= {"3", "5"}, per_pid  # every cell pinned
    assert all(len(d) == 1 for d in per_pid.values()), per_pid  # one device per worker
    assert len({d for ds in per_pid.values() for d in ds}) == len(per_pid) <= 2  # no two share one
    assert all(line.endswith((" on device 3", " on device 5")) for line in seen), seen


def test_device_slots_give_each_worker_one_device_round_robin():
    assert sweep.device_slots(2, ["3", "5"]) == ["3", "5"]
    assert sweep.device_slots(4, ["0", "1", "2"]) == ["0", "1", "2", "0"]
    assert sweep.device_slots(3, []) == [None, None, None]


# -- Slurm --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_env():
    from tests import slurm_cluster

    try:
        env, stop, folder = slurm_cluster.start()
    except slurm_cluster.Unavailable as e:
        pytest.skip(f"a real Slurm cannot run here: {e}")
    yield env
    stop()


@pytest.mark.slow
def test_slurm_path_on_a_real_single_node_slurm(slurm_env, tiny_model, tmp_path, monkeypatch, capsys):
    for k, v in slurm_env.items():
        monkeypatch.setenv(k, v)
    path = grid_file(tmp_path, tiny_model, methods=["baseline", "pi", "yarn"])
    out = tmp_path / "shared-results"
    args = [
        "sweep",
        str(path),
        "--executor",
        "slurm",
        "--max-parallel",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--cpus-per-task",
        "1",
        "--timeout-min",
        "10",
        "--summary",
        str(tmp_path / "s.json"),
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["done"], summary["failed"]) == (3, 0)
    [script] = list((out / ".sweep" / "slurm").rglob("*_submission.sh"))
    assert "#SBATCH --array=0-2%2" in script.read_text()  # one array, concurrency cap 2
    logs = "\n".join(p.read_text() for p in (out / ".sweep" / "slurm").rglob("*_log.out"))
    assert "SLURM_JOB_ID" in logs or "submitit INFO" in logs  # ran inside Slurm jobs
    for p in summary["done_records"]:
        assert records.read(Path(p))["provenance"]["device"] == "cpu"
    assert main(args) == 0  # rerun: nothing submitted
    again = json.loads((tmp_path / "s.json").read_text())
    assert (again["done"], again["skipped"]) == (0, 3)


@pytest.mark.slow
def test_slurm_path_with_submitits_local_executor(tiny_model, tmp_path):
    path = grid_file(tmp_path, tiny_model, methods=["baseline", "pi"])
    out = tmp_path / "out"
    summary = sweep.sweep(
        path,
        "slurm",
        out=str(out),
        device="cpu",
        cluster="local",
        max_parallel=2,
        slurm={"timeout_min": 10},
        log=lambda m: None,
    )
    assert (summary["done"], summary["failed"]) == (2, 0)
    assert all(records.finished(Path(p), Path(p).stem) for p in summary["done_records"])
    bad = _specs(tmp_path / "fail", 2)
    sweep.run_slurm(
        bad, 1, tmp_path / "fail" / "logs", "local", 2, {"timeout_min": 5}, lambda m: None, fn=always_failing_cell
    )
    assert all(s.attempts == 2 and "out of memory in cell" in s.reasons[-1] for s in bad)


def test_slurm_without_sbatch_is_a_clear_user_error(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    path = grid_file(tmp_path, tiny_model)
    assert main(["sweep", str(path), "--executor", "slurm", "--out", str(tmp_path / "o")]) == 2
    assert "no sbatch on PATH" in capsys.readouterr().err


# -- committed grids -------------------------------------------------------------------------------
def test_committed_grids_reproduce_every_committed_record():
    produced = set()
    for path in sorted((ROOT / "grids").glob("*.yaml")):
        g = grid.load_grid(path)
        out = g.get("out", "results")
        produced |= {str(Path(s.path).resolve()) for s in grid.expand(g, path, str(ROOT / out))}
    committed = {str(p.resolve()) for p in (ROOT / "results").rglob("*.json")}
    # records made with a zoo model's older generation (weights now only in git history) cannot be
    # produced by today's grids; they are kept until regenerated, marked "(zoo vN)" wherever shown
    older = set()
    for p in committed:
        model = json.loads(Path(p).read_text())["model"]
        if model.get("zoo") and model["sha256"] != zoo.card(model["id"].removeprefix("zoo:"))["sha256"]:
            assert zoo.generation_mark(model), p  # a retrained model of the same generation: regenerate
            older.add(p)
    missing = sorted(committed - older - produced)
    assert not missing, f"committed records that no grid in grids/ produces: {missing}"


# the commit from which records name the models their methods load (method.models, in the run id)
METHOD_MODELS = "7ed8b187d15c3a708553bbe0030b145440146b5d"


def test_committed_records_say_what_a_later_commit_changed_in_them():
    """A record must say exactly what ran: one whose git_commit predates method.models, and which
    holds it, was changed after its run, and its provenance names that commit and what it did."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)

    if git("cat-file", "-e", METHOD_MODELS + "^{commit}").returncode != 0:
        pytest.skip("this checkout has no git history to date the records' commits by")
    silent = []
    for p in sorted((ROOT / "results").rglob("*.json")):
        rec = json.loads(p.read_text())
        prov = rec["provenance"]
        for change in prov.get("amended", []):
            assert set(change) == {"commit", "what"} and change["what"], p
            assert git("merge-base", "--is-ancestor", prov["git_commit"], change["commit"]).returncode == 0, p
        if "models" in rec["method"] and METHOD_MODELS not in [c["commit"] for c in prov.get("amended", [])]:
            if git("merge-base", "--is-ancestor", METHOD_MODELS, prov["git_commit"]).returncode != 0:
                silent.append(str(p.relative_to(ROOT / "results")))  # written before the field existed
    assert not silent, f"records changed after their run without saying so: {silent}"


def test_committed_records_come_from_clean_commits():
    """Issue 23: a committed number must say exactly what ran, so every record comes from a commit
    without uncommitted changes (git_dirty false; null, a tree without git, cannot be checked)."""
    unclean = sorted(
        str(p.relative_to(ROOT / "results"))
        for p in (ROOT / "results").rglob("*.json")
        if json.loads(p.read_text())["provenance"]["git_dirty"] is not False
    )
    assert not unclean, f"records not made from a clean commit (regenerate them by their grid): {unclean}"
