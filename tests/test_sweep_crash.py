"""Crash safety of sweeps (issue 9, item 1): a sweep of 80 small cells (the issue asks for at least 50) is SIGKILLed — the sweep
process and its workers, as a node failure or a Slurm preemption would — at random moments, 10
times in a row. After every kill each record on disk must parse, be complete (its sidecar present,
one row per sample, the sidecar's sha256 the one the record names), and no record finished
before the kill may be lost or changed. A final rerun must complete exactly the missing cells.

The figures (trials, kills, lost, corrupt) are printed and written to sweep_crash_safety.json in
$HARNESS_TEST_REPORTS (`make test-slow` sets benchmarks/results/reliability/, from which
`harness docs` regenerates the table in docs/reliability.md), else in the test's tmp_path. The kill moments come from a seed printed with the figures
(CRASH_SEED=<n> replays a run)."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import records

METHODS = ["baseline", "pi", "ntk", "yarn", "dynamic_ntk"]
SEEDS = list(range(16))  # 80 cells: enough that a fast machine is still mid-sweep at the last kill
TRIALS = 10


def _check(out: Path) -> tuple[dict[str, str], list[str]]:
    """{record path: sha256 of record + sidecar} of complete records, and the corrupt ones."""
    good, corrupt = {}, []
    for p in out.rglob("*.json"):
        try:
            rec = records.read(p)
            side = records.samples_path(p).read_bytes()
            rows = [json.loads(line) for line in side.decode().splitlines() if line.strip()]
            assert hashlib.sha256(side).hexdigest() == rec["samples_sha256"]
            assert len(rows) == rec["metrics"]["accuracy"]["n"] and rec["run_id"] == p.stem
            good[str(p)] = hashlib.sha256(p.read_bytes() + side).hexdigest()
        except (ValueError, AssertionError, OSError, KeyError) as e:
            corrupt.append(f"{p}: {e!r}")
    return good, corrupt


@pytest.mark.slow
def test_sigkilled_sweep_loses_nothing_and_rerun_completes_exactly_the_missing_cells(
    tiny_model, tmp_path, reliability_report
):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "models": [tiny_model],
                "runs": [
                    {
                        "tasks": ["needle"],
                        "methods": METHODS,
                        "seeds": SEEDS,
                        "task_args": {"context_length": 128, "depths": 1, "samples_per_depth": 1, "max_new_tokens": 2},
                    }
                ],
            }
        )
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "sweep",
        str(grid),
        "--out",
        str(out),
        "--workers",
        "2",
        "--device",
        "cpu",
        "--retries",
        "0",
        "--threads",
        "1",
    ]
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    kills, lost, corrupt_total, finished = 0, [], [], {}
    for trial in range(TRIALS):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if trial in (0, 5):
            time.sleep(rng.uniform(0.5, 3.0))  # during start-up (grid expansion, worker spawn)
        else:
            # while cells are being written: after a random number of new records plus a random
            # fraction of a cell. Start-up takes 10-40 s on a loaded machine and a cell well under a
            # second on a quiet one, so the kill follows records rather than a fixed delay, and
            # the extra wait stays short enough that a fast machine cannot finish the sweep first
            target, end = len(finished) + rng.randint(1, 3), time.time() + 300
            while proc.poll() is None and len(list(out.rglob("*.json"))) < target and time.time() < end:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every worker, mid-write or not
            kills += 1
        proc.wait()
        good, corrupt = _check(out)
        corrupt_total += corrupt
        lost += [p for p, digest in finished.items() if good.get(p) != digest]
        finished = good
    before_rerun = set(finished)
    summary_file = tmp_path / "summary.json"
    done = subprocess.run(cmd + ["--summary", str(summary_file)], capture_output=True, text=True, timeout=900)
    summary = json.loads(summary_file.read_text())
    good, corrupt = _check(out)
    corrupt_total += corrupt
    lost += [p for p, digest in finished.items() if good.get(p) != digest]
    leftover_tmp = len(list(out.rglob("*.tmp")))
    figures = {
        "trials": TRIALS,
        "kills": kills,
        "cells": len(METHODS) * len(SEEDS),
        "corrupt": len(corrupt_total),
        "finished_before_rerun": len(before_rerun),
        "rerun_done": summary["done"],
        "rerun_skipped": summary["skipped"],
        "orphan_temp_files": leftover_tmp,
        "seed": seed,
    }
    reliability_report(
        "sweep_crash_safety",
        check=f"a sweep of {figures['cells']} cells SIGKILLed with its workers at random moments, then rerun",
        cases=kills,
        tracebacks=None,
        lost=len(lost) + len(corrupt_total),
        **figures,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert not corrupt_total and not lost, (corrupt_total, lost)
    assert kills >= 8, figures  # the kills really interrupted running sweeps
    cells = len(METHODS) * len(SEEDS)
    assert len(good) == cells
    assert summary["skipped"] == len(before_rerun) and summary["done"] == cells - len(before_rerun)
    assert set(summary["done_records"]) == set(good) - before_rerun  # exactly the missing cells
