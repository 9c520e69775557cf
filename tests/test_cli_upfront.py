"""Bad input found before any work (issue 21, item 3): an --out that is a file, a seed outside
[0, 2**63 - 1], a sweep device no cell could use. Each exits 2 with one line before a model loads
or a cell runs, and the file in the way is untouched."""

import subprocess
import sys

import pytest

from harness import cli, models, sweep

GRID = "task_args: {context_length: 64}\nruns:\n  - tasks: [needle]\n    methods: [baseline]\n"


@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*a, **k):
        pytest.fail("validation let the work start")

    monkeypatch.setattr(models, "load", refuse)
    monkeypatch.setattr(sweep, "run_local", refuse)


def one_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("harness: error:"), err
    for f in fragments:
        assert f in err, err


@pytest.mark.parametrize("sub", ["", "/deeper"])
def test_out_at_an_existing_file_exits_2_up_front(tmp_path, capsys, nothing_runs, sub):
    file = tmp_path / "afile"
    file.write_text("keep")
    assert cli.main(["eval", "--task", "needle", "--out", f"{file}{sub}"]) == 2
    one_error(capsys, "is a file, not a folder", str(file))
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    assert cli.main(["sweep", str(grid), "--out", f"{file}{sub}"]) == 2
    one_error(capsys, "is a file, not a folder")
    assert file.read_text() == "keep"


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64), "99999999999999999999"])
def test_seeds_outside_the_range_every_generator_takes_exit_2(tmp_path, capsys, nothing_runs, seed):
    assert cli.main(["eval", "--task", "needle", "--seed", seed, "--out", str(tmp_path / "o")]) == 2
    one_error(capsys, "--seed must be an integer in [0, 2**63 - 1]")
    grid = tmp_path / "g.yaml"
    grid.write_text(f"seeds: [{seed}]\n" + GRID)
    assert cli.main(["sweep", str(grid), "--out", str(tmp_path / "o")]) == 2
    one_error(capsys, "seeds must be integers in [0, 2**63 - 1]")
    assert not (tmp_path / "o").exists()


def test_the_largest_seed_is_accepted(tmp_path, monkeypatch):
    class Reached(Exception):
        pass

    def stop(*a, **k):
        raise Reached

    monkeypatch.setattr(models, "load", stop)
    with pytest.raises(Reached):
        cli.main(["eval", "--task", "needle", "--seed", str(2**63 - 1), "--out", str(tmp_path)])


@pytest.mark.parametrize(
    "flags,problem",
    [
        (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
        (["--devices", "99"], "--devices: no GPU 99 here"),
        (["--devices", "abc"], "--devices: no GPU abc here"),
        (["--executor", "slurm", "--device", "gpu"], "--device must be"),
    ],
)
def test_a_sweep_device_no_cell_could_use_exits_2_once_up_front(tmp_path, capsys, nothing_runs, flags, problem):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    assert cli.main(["sweep", str(grid), "--out", str(tmp_path / "o"), *flags]) == 2
    one_error(capsys, problem)


@pytest.mark.parametrize("which", ["@evil_model", "@trunc_model", "@fifo_model"])
def test_an_unreadable_or_malicious_checkpoint_exits_2_with_one_line(tiny_model, tmp_path, which):
    """Run as a subprocess under a hang guard: a FIFO as weights used to block the hash forever."""
    from pathlib import Path

    from tests.test_cli_fuzz import hostile_checkpoints

    folder = hostile_checkpoints(tmp_path / "models", Path(tiny_model))[which]
    argv = ["eval", "--task", "needle", "--task-arg", "context_length=64", "--model", str(folder)]
    cmd = [sys.executable, "-m", "harness.cli", *argv, "--allow-pickle", "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("harness: error:"), done.stderr[-2000:]
    assert str(folder) in lines[0] and not (tmp_path / "o").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_a_sweep_summary_path_that_cannot_be_written_exits_2_up_front(tmp_path, capsys, nothing_runs, where):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    (tmp_path / "afile").write_text("keep")
    summary = tmp_path if where == "folder" else tmp_path / "afile" / "summary.json"
    assert cli.main(["sweep", str(grid), "--out", str(tmp_path / "o"), "--summary", str(summary)]) == 2
    one_error(capsys, "--summary")
    assert (tmp_path / "afile").read_text() == "keep"
