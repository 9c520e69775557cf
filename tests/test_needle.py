"""Needle prompt construction: deterministic for a seed, needle at the requested depth, exact budget."""
import pytest

from harness import registry
from harness.synthetic import EVAL_SEED_BASE, PREAMBLE, sample_seed
from harness.tasks.needle import Needle, depth_grid


def test_depth_grid():
    assert depth_grid(1) == [50.0]
    assert depth_grid(3) == [0.0, 50.0, 100.0]
    assert depth_grid(10)[1] == pytest.approx(100 / 9)


def test_alias_resolves_to_context_length():
    cls, params = registry.task("needle_1k")
    assert cls is Needle and params == {"context_length": "1024"}
    cls, params = registry.task("needle_128k")
    assert params == {"context_length": str(128 * 1024)}


def test_sample_seeds_are_evaluation_seeds():
    assert sample_seed(0, 512, 0.0, 0) >= EVAL_SEED_BASE
    assert sample_seed(0, 512, 0.0, 0) != sample_seed(1, 512, 0.0, 0)


def test_build_is_deterministic_and_fits_budget(tiny_lm):
    task = Needle(context_length=(300,), max_new_tokens=8)
    a = task.build(tiny_lm, 300, 50.0, seed=EVAL_SEED_BASE + 5)
    b = task.build(tiny_lm, 300, 50.0, seed=EVAL_SEED_BASE + 5)
    c = task.build(tiny_lm, 300, 50.0, seed=EVAL_SEED_BASE + 6)
    assert a == b and a["ids"] != c["ids"]
    assert 300 - 8 - 12 <= len(a["ids"]) <= 300 - 8   # within one sentence of the budget
    text = tiny_lm.decode(a["ids"])
    assert text.startswith(PREAMBLE) and a["value"] in text and a["key"] in text.split("\n")[-1]


@pytest.mark.parametrize("depth", [0.0, 25.0, 50.0, 75.0, 100.0])
def test_needle_sits_at_requested_depth_within_one_sentence(tiny_lm, depth):
    task = Needle(context_length=(600,))
    s = task.build(tiny_lm, 600, depth, seed=EVAL_SEED_BASE + 11)
    position = s["needle_token"] / s["haystack_tokens"]
    longest_sentence = 16   # tokens, an upper bound for the synthetic grammar
    assert abs(position - depth / 100) * s["haystack_tokens"] <= longest_sentence
    # the needle's tokens really are at that offset of the prompt
    needle_ids = tiny_lm.encode(" Remember the special magic number for")
    start = len(tiny_lm.encode(PREAMBLE)) + s["needle_token"]
    assert s["ids"][start:start + len(needle_ids)] == needle_ids


def test_file_haystack(tiny_lm, tmp_path):
    f = tmp_path / "hay.txt"
    f.write_text("The grass is green. The sky is blue! Is the sun yellow? " * 40)
    task = Needle(context_length=(200,), haystack=str(f))
    from harness.interfaces import TaskContext
    res = task.run(TaskContext(lm=tiny_lm, limit=3))
    assert len(res.samples) == 3 and res.metrics["accuracy"].n == 3
    assert {"grid"} <= set(res.details)


def test_limit_covers_depths_first(tiny_lm):
    plan = Needle(context_length=(256, 512), depths=5).samples_plan(0)
    first = plan[:10]
    assert {(L, d) for L, d, _ in first} == {(L, d) for L in (256, 512) for d in depth_grid(5)}
