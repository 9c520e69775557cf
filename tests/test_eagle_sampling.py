"""EAGLE-1's drafts above temperature 0: children drawn without replacement from the draft
distribution, each recorded with the conditional probability EAGLE-1's code uses (issue #74);
EAGLE-2 keeps deterministic top-k picks verified with q = 1."""

from collections import Counter

import pytest
import torch

from harness.methods.spec.eagle import Eagle
from harness.methods.spec.eagle2 import Eagle2
from tests.test_eagle2_tree import PathState, logits_for


def _draft(method, temperature, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return method.draft(PathState(), logits_for(()), method.max_depth, Counter(), temperature, gen)


@pytest.mark.fidelity(
    "eagle", reference="SafeAILab/EAGLE@2320d52's draft probability p_j / (1 − Σ_{i<j} p_i)", tolerance="abs 1e-5"
)
def test_eagle_children_carry_the_released_conditional_draft_probability():
    """SafeAILab/EAGLE@2320d52 (anchors-scale §7): the j-th draw's recorded probability is
    p_j / (1 - sum_{i<j} p_i), p the node's draft distribution; earlier draws get no mass."""
    method = Eagle()
    tree = _draft(method, 0.7)
    assert len(tree) == len(method.choices)
    for parent, tries in tree.attempts.items():
        path = tuple(tree.tokens[n] for n in tree.path(parent)) if parent >= 0 else ()
        p = torch.softmax(logits_for(path) / 0.7, -1)
        drawn = [tree.tokens[n] for n, _ in tries]
        assert len(set(drawn)) == len(drawn)  # without replacement
        for j, (node, q) in enumerate(tries):
            x = tree.tokens[node]
            assert q is not None
            want = float(p[x]) / (1 - sum(float(p[t]) for t in drawn[:j]))
            assert abs(float(q[x]) - min(1.0, want)) < 1e-5
            assert all(float(q[t]) == 0 for t in drawn[:j])


def test_eagle_children_are_random_draws_not_the_top_k():
    tops = {tuple(_draft(Eagle(), 1.0, seed).tokens) for seed in range(6)}
    assert len(tops) > 1  # the drafts vary with the seed


def test_greedy_and_eagle2_drafts_are_deterministic_picks():
    greedy = _draft(Eagle(), 0.0)
    root = [greedy.tokens[n] for n, _ in greedy.attempts[-1]]
    assert root == logits_for(()).topk(len(root)).indices.tolist()
    for method, t in ((Eagle(), 0.0), (Eagle2(), 1.0)):
        tree = _draft(method, t)
        assert all(q is None for tries in tree.attempts.values() for _, q in tries)
