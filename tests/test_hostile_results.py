"""A hostile results folder (issue 21, item 2): the leaderboard loader and `harness gate` skip and
name each bad file with its reason, never hang on a FIFO or an endless device, never follow a link
out of the folder, and a second record with the same run id cannot mask a regression (gate exit 2
naming both files). Calls that would hang before the fix run under a generous hang guard (a thread
or subprocess joined with a long timeout): it only turns a hang into a failure."""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness import records
from harness.leaderboard import loader
from tests import test_gate

HANG_GUARD_S = 300  # far above any normal run: only reached by a hang


def write(folder: Path, rid: str, scores: list[float]) -> Path:
    test_gate.write(folder, rid, scores)
    return folder / "needle" / f"{rid}.json"


def gate(base: Path, cur: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", "gate", "--baseline", str(base), "--current", str(cur)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S)


def load(root: Path):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("res", loader.load(root)), daemon=True)
    t.start()
    t.join(HANG_GUARD_S)
    assert not t.is_alive(), "the loader hangs"
    return out["res"]


def fifo(d: Path, good: Path):
    os.mkfifo(d / "pipe.json")


def bad_name(d: Path, good: Path):
    shutil.copy(good, os.path.join(os.fsencode(d), b"\xff\xfe-not-utf8.json"))


def dup(d: Path, good: Path):
    shutil.copy(good, d / good.name)


def record_link_out(d: Path, good: Path):
    os.symlink(good, d / "elsewhere.json")


@pytest.mark.parametrize(
    "make,reason",
    [
        (fifo, "not a regular file"),
        (bad_name, "file name not UTF-8"),
        (dup, "duplicate run id"),
        (record_link_out, "symlink"),
    ],
)
def test_loader_and_gate_name_each_hostile_file(tmp_path, make, reason):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write(base, "r1", [1, 1, 0, 1])
    good = write(cur, "r1", [1, 1, 0, 1])
    junk = cur / "needle" / "z-junk"  # sorts after r1.json: the copy is the second seen
    junk.mkdir()
    make(junk, tmp_path / "base" / "needle" / "r1.json" if make is record_link_out else good)
    res = load(cur)
    assert [r.run_id for r in res.runs] == ["r1"]
    assert [why.split(":")[0] for _, why in res.skipped] == [reason]
    ((rel, _),) = res.skipped
    assert rel.startswith("needle/z-junk/")
    rel.encode("utf-8")  # printable: the app can show it
    done = gate(base, cur)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "1 unreadable file" in err
    assert reason in err and str(junk) in err
    if make is dup:  # both copies named: the one skipped and the one kept
        assert str(good.relative_to(cur)) in err


def test_a_duplicate_cannot_mask_a_regression(tmp_path):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write(base, "r1", [1.0] * 20)
    write(cur / "a", "r1", [0.0] * 20)  # the regression
    write(cur / "b", "r1", [1.0] * 20)  # an unchanged copy that would hide it
    done = gate(base, cur)
    assert done.returncode == 2 and "duplicate run id" in done.stderr
    assert "a/needle/r1.json" in done.stderr and "b/needle/r1.json" in done.stderr


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "outside"])
def test_a_hostile_sidecar_is_refused_unread(tmp_path, target):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write(base, "r1", [1, 0, 1, 1])
    path = write(cur, "r1", [1, 0, 1, 1])
    side = records.samples_path(path)
    side.unlink()
    if target == "fifo":
        os.mkfifo(side)
    else:
        outside = tmp_path / "outside.jsonl"
        shutil.copy(records.samples_path(base / "needle" / "r1.json"), outside)
        os.symlink("/dev/zero" if target == "/dev/zero" else outside, side)
    done = gate(base, cur)
    # a symlinked sidecar is reported by the folder scan; a FIFO when the paired test reads it
    problem = "per-sample values unreadable" if target == "fifo" else "symlink: not followed"
    assert done.returncode == 2 and problem in done.stderr and side.name in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    res = load(cur)
    rows, why = loader.load_samples(cur, res.runs[0])
    assert rows == [] and ("symlink" in why or "not a regular file" in why)
    assert not records.finished(path, "r1")


def test_metrics_of_the_wrong_shape_are_skipped(tmp_path):
    path = write(tmp_path, "r1", [1, 0])
    for name, metrics in (("list", [1, 2]), ("number", {"accuracy": 3}), ("text", "high")):
        data = dict(json.loads(path.read_text()), run_id=name, metrics=metrics)
        (tmp_path / "needle" / f"{name}.json").write_text(json.dumps(data))
    res = load(tmp_path)
    assert [r.run_id for r in res.runs] == ["r1"] and len(res.skipped) == 3
    assert all(why.startswith("malformed record") for _, why in res.skipped)
    done = gate(tmp_path, tmp_path)
    assert done.returncode == 2 and "3 unreadable file(s)" in done.stderr
