"""Resumable cells (harness.journal): a cell killed part-way resumes from its finished generation
batches, and its record then holds what an uninterrupted run's holds; nothing is replayed from a
journal of other code, or where a replay could change the result."""

import json

import pytest

from harness import cli, journal, provenance, records
from harness.lm import LM

# a yarn needle cell of three prompts, one per batch: three journal entries
ARGS = [
    "eval",
    "--task",
    "needle",
    "--method",
    "yarn",
    "--task-arg",
    "context_length=256",
    "--task-arg",
    "depths=3",
    "--task-arg",
    "samples_per_depth=1",
    "--task-arg",
    "max_new_tokens=4",
    "--batch-size",
    "1",
]


REAL = LM._generate_batch


class Killed(BaseException):
    """What a kill looks like from inside the cell: not an error the harness handles."""


@pytest.fixture
def clean_tree(monkeypatch):
    """The journal trusts only a clean commit; the checkout running the tests may be dirty."""
    state = {"git_commit": "0" * 40, "git_dirty": False}
    monkeypatch.setattr(provenance, "git_state", lambda: dict(state))
    return state


def _count_batches(monkeypatch, kill_after=None):
    computed = []

    def counted(self, ids, *a):
        if kill_after is not None and len(computed) == kill_after:
            raise Killed
        computed.append(ids.shape)
        return REAL(self, ids, *a)

    monkeypatch.setattr(LM, "_generate_batch", counted)
    return computed


def _record(out):
    (path,) = list(out.rglob("*.json"))
    return path, records.read(path), records.read_samples(path)


def test_a_killed_cell_resumes_and_its_record_equals_an_uninterrupted_one(tmp_path, monkeypatch, clean_tree):
    computed = _count_batches(monkeypatch)
    assert cli.main([*ARGS, "--out", str(tmp_path / "whole")]) == 0
    assert len(computed) == 3
    _, whole, whole_samples = _record(tmp_path / "whole")

    out = tmp_path / "killed"
    computed = _count_batches(monkeypatch, kill_after=2)
    with pytest.raises(Killed):
        cli.main([*ARGS, "--out", str(out)])
    (partial,) = list(out.rglob("*.partial"))
    assert len(partial.read_text().splitlines()) == 1 + 2  # header + the two finished batches
    assert not list(out.rglob("*.json"))

    computed = _count_batches(monkeypatch)
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    assert len(computed) == 1  # only the batch the kill interrupted ran again
    path, resumed, resumed_samples = _record(out)
    assert not partial.exists()
    for field in ("run_id", "metrics", "details", "telemetry", "task", "method", "model"):
        assert resumed[field] == whole[field], field
    assert resumed_samples == whole_samples
    prov = resumed["provenance"]
    assert prov["resumed_batches"] == 2
    assert 0 < prov["resumed_seconds"] <= prov["wall_time_s"]
    assert "resumed_batches" not in whole["provenance"]


def test_a_journal_of_other_code_is_not_replayed(tmp_path, monkeypatch, clean_tree):
    out = tmp_path / "o"
    _count_batches(monkeypatch, kill_after=2)
    with pytest.raises(Killed):
        cli.main([*ARGS, "--out", str(out)])
    clean_tree["git_commit"] = "1" * 40  # the code changed between the attempts
    computed = _count_batches(monkeypatch)
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    assert len(computed) == 3
    assert "resumed_batches" not in _record(out)[1]["provenance"]


def test_a_dirty_tree_keeps_no_journal(tmp_path, monkeypatch, clean_tree):
    clean_tree["git_dirty"] = True
    out = tmp_path / "o"
    _count_batches(monkeypatch, kill_after=2)
    with pytest.raises(Killed):
        cli.main([*ARGS, "--out", str(out)])
    assert not list(out.rglob("*.partial"))


def test_a_line_cut_short_by_a_kill_is_dropped(tmp_path):
    identity = {"run_id": "r", "git_commit": "c", "git_dirty": False}
    path = tmp_path / "r.json"
    j = journal.open_for(path, identity, lambda: {"max_rss_bytes": 5})
    j.add("k1", [[1, 2]], {"forward_calls": 3}, 1.5)
    j.add("k2", [[3]], {"forward_calls": 2}, 2.0)
    j.close(finished=False)
    part = journal.path_for(path)
    part.write_text(part.read_text()[:-9])  # the second batch's line, cut short
    stale = part.with_name(part.name + ".tmp")  # and a rewrite the kill interrupted
    stale.write_text("{")
    again = journal.open_for(path, identity, lambda: {"max_rss_bytes": 9})
    assert not stale.exists()
    assert again.take("k1")["rows"] == [[1, 2]]
    assert again.take("k2") is None
    assert again.batch_size() == 1  # a resumed cell keeps the earlier attempt's batch (harness.budget)
    fields = journal.timing(again.replayed, 10.0, {"max_rss_bytes": 4, "max_rss_scope": "cell"})
    assert fields == {
        "wall_time_s": 11.5,
        "max_rss_bytes": 5,  # the earlier attempt's peak was higher
        "max_rss_scope": "cell",
        "resumed_batches": 1,
        "resumed_seconds": 1.5,
    }


def test_batches_a_replay_could_change_are_not_journaled(tmp_path):
    class PlainLM:  # what replayable reads of an LM
        generate_batch_hook = forward_logits_hook = kv_policy = None

    lm = PlainLM()
    assert journal.replayable(lm, temperature=0.0, seed=None)
    assert journal.replayable(lm, temperature=0.7, seed=3)
    assert not journal.replayable(lm, temperature=0.7, seed=None)  # later batches' random stream would shift
    lm.generate_batch_hook = lambda *a: None  # KV-cache and speculative methods keep their own statistics
    assert not journal.replayable(lm, temperature=0.0, seed=None)
    lm.generate_batch_hook, lm.kv_policy = None, object()
    assert not journal.replayable(lm, temperature=0.0, seed=None)


def test_overwrite_starts_over(tmp_path, monkeypatch, clean_tree):
    out = tmp_path / "o"
    _count_batches(monkeypatch, kill_after=2)
    with pytest.raises(Killed):
        cli.main([*ARGS, "--out", str(out)])
    computed = _count_batches(monkeypatch)
    assert cli.main([*ARGS, "--out", str(out), "--overwrite"]) == 0
    assert len(computed) == 3
    assert json.loads(next(out.rglob("*.json")).read_text())["provenance"].get("resumed_batches") is None
