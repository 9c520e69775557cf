"""kv_compression's main metric (version 2): the needle accuracy of the compressed row holding the
most KV bytes within rank_bytes of the dense cache's, absent (with details.ranked_row None) where
no row fits, so quantizers and token-eviction methods are ranked at equal memory."""

import pytest

from harness import cli, models, records, runner
from harness.tasks.kv_compression import KVCompression, equal_memory_row

# byte fractions as the committed records hold them (token rows round their kept tokens up a little)
TOKENS = {"0.1": 0.1007, "0.25": 0.2498, "0.5": 0.5005, "0.75": 0.7502}


def test_the_row_read_is_the_largest_within_rank_bytes():
    assert equal_memory_row(TOKENS, 0.3) == ("0.25", 0.2498)
    assert equal_memory_row({"native": 0.2623}, 0.3) == ("native", 0.2623)  # kivi: 2 bits, scales, zeros
    assert equal_memory_row({"native": 0.3651}, 0.3) is None  # gear: 4 bits
    assert equal_memory_row({"native": 0.3170}, 0.3) is None  # gear at 2048 tokens: still over
    assert equal_memory_row({}, 0.3) is None  # dense only (baseline, cla)
    assert equal_memory_row(TOKENS, 0.6) == ("0.5", 0.5005)
    assert equal_memory_row(TOKENS, 1.0) == ("0.75", 0.7502)
    assert equal_memory_row(TOKENS, 0.5) == ("0.25", 0.2498)  # 0.5005 exceeds 0.5: the bound is strict
    assert equal_memory_row(TOKENS, 0.05) is None
    assert equal_memory_row({"0.3": 0.1 + 0.2}, 0.3) == ("0.3", 0.1 + 0.2)  # float noise is not "exceeding"


def summarise(task, fractions, needle):
    """The task's summary of rows whose per-call byte fractions and needle scores are given."""
    names = {1.0: "dense", **{float(n) if n != "native" else 0.0: n for n in fractions}}
    per = {"dense": {"needle_accuracy": [1.0], "kv_bytes_fraction": [1.0]}}
    for n, f in fractions.items():
        per[n] = {"needle_accuracy": needle[n], "kv_bytes_fraction": [f] * len(needle[n])}
    return task.summarise([], list(names), names, per)


@pytest.mark.parametrize(
    "fractions,rank_bytes,want",
    [
        (TOKENS, 0.3, "0.25"),
        ({"native": 0.2623}, 0.3, "native"),
        ({"native": 0.3651}, 0.3, None),
        ({}, 0.3, None),
        (TOKENS, 0.6, "0.5"),
    ],
)
def test_the_record_holds_that_rows_needle_accuracy_or_none(fractions, rank_bytes, want):
    needle = {n: [1.0, 0.0, i % 2] for i, n in enumerate(fractions)}  # each row its own mean
    res = summarise(KVCompression(rank_bytes=rank_bytes, timing_lengths=(128,)), fractions, needle)
    if want is None:
        assert "needle_accuracy_at_memory" not in res.metrics and res.details["ranked_row"] is None
        return
    assert res.details["ranked_row"] == {"budget": want, "kv_bytes_fraction": fractions[want]}
    main, row = res.metrics["needle_accuracy_at_memory"], res.metrics[f"needle_accuracy@{want}"]
    assert main.to_dict() == row.to_dict() and main.value == sum(needle[want]) / 3
    assert next(iter(res.metrics)) == "needle_accuracy_at_memory"
    assert "needle_accuracy" in res.metrics and all(f"needle_accuracy@{n}" in res.metrics for n in fractions)


@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*a, **k):
        pytest.fail("validation let the work start")

    monkeypatch.setattr(models, "load", refuse)


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5", "nan", "big"])
def test_bad_rank_bytes_exit_2_with_one_line_before_any_work(value, capsys, nothing_runs, tmp_path):
    argv = ["eval", "--task", "kv_compression", "--method", "snapkv", "--out", str(tmp_path)]
    assert cli.main([*argv, "--task-arg", f"rank_bytes={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rank_bytes" in err and "Traceback" not in err, err
    assert not list(tmp_path.rglob("*.json"))


def test_a_real_cell_on_the_zoo_model_ranks_its_025_row(tmp_path):
    args = {
        "context_length": "192",
        "needle_samples": "1",
        "ppl_samples": "1",
        "ppl_decode_tokens": "8",
        "timing_lengths": "128",
        "timing_new_tokens": "2",
        "max_new_tokens": "4",
    }
    cells = runner.resolve(["kv_compression"], ["snapkv"], "zoo:tiny-llama", args, {}, limit=1)
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    assert rec["task"]["version"] == "2" and rec["task"]["params"]["rank_bytes"] == 0.3
    assert rec["main_metric"] == "needle_accuracy_at_memory"
    row = rec["details"]["ranked_row"]
    assert row["budget"] == "0.25" and row["kv_bytes_fraction"] == rec["metrics"]["kv_bytes_fraction@0.25"]["value"]
    assert abs(row["kv_bytes_fraction"] - 0.25) <= 0.02
    assert rec["metrics"]["needle_accuracy_at_memory"] == rec["metrics"]["needle_accuracy@0.25"]
    assert rec["metrics"]["kv_bytes_fraction@0.5"]["value"] > 0.3  # the next row up is over the bound


@pytest.mark.parametrize("value", [0.0, -1.0, 1.01])
def test_the_python_api_refuses_rank_bytes_outside_0_1(value):
    with pytest.raises(ValueError, match="rank_bytes"):
        KVCompression(rank_bytes=value)
