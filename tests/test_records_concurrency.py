"""Records under concurrency and crashes (issue 21, item 1): temporaries of dead writers are cleaned
on the next write, and a record and its sidecar appear to readers as one pair."""

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import records


def rec(tag: str, rid: str = "cell") -> dict:
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": rid,
        "task": {"name": "t"},
        "method": {"name": "m"},
        "model": {"id": "x"},
        "provenance": {"tag": tag},
        "metrics": {"accuracy": {"value": 0.5, "direction": "higher", "n": 1}},
    }


def rows(tag: str, n: int = 20) -> list[dict]:
    return [{"id": f"s{j}", "tag": tag, "pad": "x" * 200} for j in range(n)]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_temporary_is_cleaned_by_the_next_write(tmp_path):
    path = tmp_path / "cell.json"
    # a writer that dies after writing its temporary, before the rename (as SIGKILL would leave it)
    code = "import os, sys, pathlib; from harness import records; records._write_temp(pathlib.Path(sys.argv[1]), b'x'); os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code, str(path)]).returncode == 9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].endswith(".tmp")
    records.write(path, rec("a"), rows("a"))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert records.finished(path, "cell")


def test_only_temporaries_of_dead_writers_of_this_host_are_deleted(tmp_path):
    host = records._HOST
    dead = f".cell.json.{host}.{dead_pid()}.0123abcd.tmp"
    live = f".cell.json.{host}.{os.getpid()}.0123abcd.tmp"  # this process: alive
    other_host = f".cell.json.otherhost{host}.{dead_pid()}.0123abcd.tmp"
    legacy = ".cell.jsonab12_x9.tmp"  # mkstemp's naming: its writer is unknown, so it is kept
    for name in (dead, live, other_host, legacy):
        (tmp_path / name).write_bytes(b"partial")
    assert records.clean_stale_temps(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, other_host, legacy])


def test_a_record_cannot_name_a_sidecar_outside_its_own_names(tmp_path):
    path = tmp_path / "cell.json"
    records.write(path, rec("a"), rows("a"))
    data = json.loads(path.read_text())
    for hostile in ("../../etc/passwd", "/etc/passwd", "other.0123456789abcdef.samples.jsonl"):
        assert records.samples_path(path, dict(data, samples_file=hostile)) == tmp_path / "cell.samples.jsonl"


def test_a_sidecar_that_does_not_match_its_record_is_not_complete(tmp_path):
    path = tmp_path / "cell.json"
    records.write(path, rec("a"), rows("a"))
    side = records.samples_path(path)
    side.write_text(side.read_text().replace('"a"', '"b"'))  # same name, other content
    assert not records.finished(path, "cell")
    with pytest.raises(records.Incomplete, match="samples_sha256"):
        records.read_samples(path)
    side.unlink()
    with pytest.raises(records.Incomplete, match="missing"):
        records.read_samples(path)


def test_a_rewrite_deletes_the_superseded_sidecar(tmp_path):
    path = tmp_path / "cell.json"
    records.write(path, rec("a"), rows("a"))
    first = records.samples_path(path)
    records.write(path, rec("b"), rows("b"))
    second = records.samples_path(path)
    assert first != second and not first.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cell.json", second.name])


def _rewriter(folder: str, worker: int, started, stop) -> None:
    i = 0
    while not stop.is_set():
        tag = f"{worker}-{i}"
        records.write(Path(folder) / "cell.json", rec(tag), rows(tag))
        started.set()
        i += 1


VERSIONS = 20  # the reader goes on until it has seen this many versions: the race really ran


@pytest.mark.parametrize("reads", [1000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_readers_never_see_a_record_with_another_writers_sidecar(tmp_path, reliability_report, reads):
    """3 processes rewrite one cell in a loop while this process reads it at least `reads` times
    (10,000 under `make test-slow`, ~5 s idle) and until it has seen VERSIONS versions: every pair
    read is one writer's record with its own rows."""
    path = tmp_path / "cell.json"
    records.write(path, rec("init"), rows("init"))
    ctx = mp.get_context("spawn")
    stop, started = ctx.Event(), [ctx.Event() for _ in range(3)]
    writers = [ctx.Process(target=_rewriter, args=(str(tmp_path), w, started[w], stop)) for w in range(3)]
    for w in writers:
        w.start()
    mismatched, incomplete, tags, done = 0, 0, set(), 0
    try:
        for event in started:  # every writer is writing before the reads start (hang guard only)
            assert event.wait(300), "a writer process never started"
        while done < reads or len(tags) < VERSIONS:
            done += 1
            try:
                record, samples = records.read_pair(path)
            except records.Incomplete:
                incomplete += 1
                continue
            tag = record["provenance"]["tag"]
            side = records.samples_path(path, record)
            tags.add(tag)
            if {s["tag"] for s in samples} != {tag} or side.name != records.samples_name(
                path, record["samples_sha256"]
            ):
                mismatched += 1
    finally:
        stop.set()
        for w in writers:
            w.join(60)
    final, samples = records.read_pair(path)
    left = sorted(p.name for p in tmp_path.iterdir())
    reliability_report(
        "records_race",
        check="concurrent rewrites of one record and its sidecar, read meanwhile (3 writer processes)",
        cases=done,
        tracebacks=None,
        lost=mismatched,
        mismatched_pairs=mismatched,
        incomplete_reads_retried_out=incomplete,
        versions_seen=len(tags),
        files_left=len(left),
    )
    assert mismatched == 0
    assert hashlib.sha256(records.samples_path(path, final).read_bytes()).hexdigest() == final["samples_sha256"]
    assert left == sorted(["cell.json", final["samples_file"]])  # no temporaries, one sidecar


def test_without_a_folder_lock_the_pair_is_still_published_and_old_sidecars_are_kept(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(9, "Bad file descriptor")  # as flock on a folder of some NFS mounts

    monkeypatch.setattr(records.fcntl, "flock", no_flock)
    path = tmp_path / "cell.json"
    records.write(path, rec("a"), rows("a"))
    first = records.samples_path(path)
    records.write(path, rec("b"), rows("b"))
    assert records.read_pair(path)[1] == rows("b") and first.exists()  # left, never read
