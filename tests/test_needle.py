"""Needle prompt construction: deterministic for a seed, needle at the requested depth, exact budget."""

import pytest

from harness import registry
from harness.interfaces import TaskContext
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
    assert 300 - 8 - 12 <= len(a["ids"]) <= 300 - 8  # within one sentence of the budget
    text = tiny_lm.decode(a["ids"])
    (value,) = a["refs"]
    assert text.startswith(PREAMBLE) and f": {value}." in text and text.endswith(":")


@pytest.mark.parametrize("depth", [0.0, 25.0, 50.0, 75.0, 100.0])
def test_needle_sits_at_requested_depth_within_one_sentence(tiny_lm, depth):
    task = Needle(context_length=(600,))
    s = task.build(tiny_lm, 600, depth, seed=EVAL_SEED_BASE + 11)
    position = s["needle_token"] / s["haystack_tokens"]
    longest_sentence = 16  # tokens, an upper bound for the synthetic grammar
    assert abs(position - depth / 100) * s["haystack_tokens"] <= longest_sentence
    # the needle's tokens really are at that offset of the prompt
    needle_ids = tiny_lm.encode(" Remember the special magic number for")
    start = len(tiny_lm.encode(PREAMBLE)) + s["needle_token"]
    assert s["ids"][start : start + len(needle_ids)] == needle_ids


def test_file_haystack(tiny_lm, tmp_path):
    f = tmp_path / "hay.txt"
    f.write_text("The grass is green. The sky is blue! Is the sun yellow? " * 40)
    task = Needle(context_length=(200,), haystack=str(f))
    res = task.run(TaskContext(lm=tiny_lm, limit=3))
    assert len(res.samples) == 3 and res.metrics["accuracy"].n == 3
    assert {"grid"} <= set(res.details)


@pytest.mark.parametrize("variant,refs", [("multikey", 1), ("multivalue", 4), ("multiquery", 4), ("vt", 5)])
def test_variants_insert_all_statements_and_ask_for_their_references(tiny_lm, variant, refs):
    task = Needle(context_length=(500,), variant=variant)
    s = task.build(tiny_lm, 500, 30.0, seed=EVAL_SEED_BASE + 3)
    text = tiny_lm.decode(s["ids"])
    assert len(s["refs"]) == refs and len(s["ids"]) <= 500 - task.max_new_tokens
    if variant == "vt":
        names = s["refs"]
        chain = [text.index(f"VAR {b} = VAR {a}.") for a, b in zip(names, names[1:])]
        assert text.index(f"VAR {names[0]} = ") < chain[0] and chain == sorted(chain)  # in order
        assert text.startswith("Memorize and track") and "variables are assigned the value" in text
    else:
        assert text.count("Remember the special magic number for") == 4
        for ref in s["refs"]:
            assert f": {ref}." in text
        if variant == "multivalue":
            assert len({line.split(":")[0] for line in text.split("Remember")[1:]}) == 1  # one key
    assert abs(s["needle_token"] / s["haystack_tokens"] - 0.30) < 0.1


def test_string_match_all_scores_fractions(tiny_lm):
    task = Needle(context_length=(300,), variant="multiquery", max_new_tokens=4)
    res = task.run(TaskContext(lm=tiny_lm, limit=2))
    for row in res.samples:
        expected = sum(r.lower() in row["prediction"].lower() for r in row["references"]) / 4
        assert row["score"] == expected


def test_limit_covers_depths_first(tiny_lm):
    plan = Needle(context_length=(256, 512), depths=5).samples_plan(0)
    first = plan[:10]
    assert {(L, d) for L, d, _ in first} == {(L, d) for L in (256, 512) for d in depth_grid(5)}
