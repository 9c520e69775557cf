"""Record round trip, deterministic paths and run ids, atomic writes, validation."""

import json

import pytest

from harness import records


def cell(seed=0):
    return {
        "task": {"name": "needle", "version": "1", "params": {"context_length": [1024]}},
        "method": {"name": "yarn", "params": {"yarn": {"factor": None}}},
        "model": {"id": "zoo:tiny-llama", "sha256": "ab" * 32},
        "seed": seed,
        "limit": None,
    }


def test_run_id_is_canonical_and_sensitive():
    a, b = cell(), json.loads(json.dumps(cell()))
    b["task"] = dict(reversed(list(b["task"].items())))  # key order does not matter
    assert records.run_id(a) == records.run_id(b)
    assert records.run_id(a) != records.run_id(cell(seed=1))
    c = cell()
    c["model"]["sha256"] = "cd" * 32  # other weights, other cell
    assert records.run_id(a) != records.run_id(c)


def test_path_layout(tmp_path):
    p = records.record_path(tmp_path, cell(), "abc")
    assert p == tmp_path / "needle" / "zoo_tiny-llama" / "yarn" / "abc.json"
    c = cell()
    c["model"]["id"] = "hf:org/Some Model"
    assert records.record_path(tmp_path, c, "x").parent.parent.name == "hf_org_Some_Model"


def full_record(rid="r1"):
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": rid,
        **cell(),
        "metrics": {"accuracy": {"value": 0.5, "direction": "higher", "n": 2}},
        "provenance": {"seed": 0},
    }


def test_round_trip_and_sidecar(tmp_path):
    path = tmp_path / "a" / "r1.json"
    samples = [{"id": "s1", "prediction": "é<b>x</b>", "correct": 1}, {"id": "s2", "prediction": "", "correct": 0}]
    records.write(path, full_record(), samples)
    rec = records.read(path)
    assert rec["metrics"]["accuracy"]["value"] == 0.5 and rec["samples_file"] == records.samples_name(
        path, rec["samples_sha256"]
    )
    assert records.read_samples(path) == samples
    assert records.finished(path, "r1") and not records.finished(path, "other")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content,message",
    [
        (b'{"schema_version": 1, "run_id"', "not a readable JSON"),
        (b"\x00\xff\xfe binary", "not a readable JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"schema_version": 1}', "missing fields"),
    ],
)
def test_invalid_records_are_reported(tmp_path, content, message):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        records.read(p)
    assert not records.finished(p, "r1")


def test_wrong_schema_version(tmp_path):
    p = tmp_path / "r1.json"
    rec = full_record()
    rec["schema_version"] = 99
    p.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="schema_version"):
        records.read(p)


def test_failed_write_leaves_previous_record_intact(tmp_path, monkeypatch):
    path = tmp_path / "r1.json"
    records.write(path, full_record(), [{"id": "s"}])
    before = path.read_bytes()

    class Boom(Exception):
        pass

    def explode(*a, **k):
        raise Boom

    monkeypatch.setattr(records.os, "replace", explode)
    with pytest.raises(Boom):
        records.write(path, dict(full_record(), metrics={}), [{"id": "t"}])
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_records_get_the_umask_mode_not_mkstemps_0600(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "_UMASK", 0o022)
    path = tmp_path / "r.json"
    records._atomic_write(path, b"{}")
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the group and others, as open() gives


def test_a_write_that_fails_after_the_first_temporary_leaves_none(tmp_path, monkeypatch):
    real, calls = records._write_temp, []

    def second_fails(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(records, "_write_temp", second_fails)
    with pytest.raises(OSError):
        records.write(tmp_path / "r1.json", full_record(), [{"id": "s"}])
    assert not list(tmp_path.iterdir())
