"""REST's two sampling rules: the released sample-and-match verification (its nucleus against
transformers' top-p warper, its output law against the law worked out from the released code)
and the exact default."""

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from harness.methods.spec._tree import Tree
from harness.methods.spec.rest import REST, nucleus, sample_and_match


@pytest.mark.fidelity("rest", reference="transformers TopPLogitsWarper", tolerance="float64 assert_close defaults")
@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95])
def test_nucleus_equals_transformers_top_p(top_p):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    want = torch.softmax(TopPLogitsWarper(top_p)(None, logits.clone()), -1)
    torch.testing.assert_close(nucleus(torch.softmax(logits, -1), top_p), want)


def _first_token_law(tree: Tree, p: torch.Tensor, top_p: float, draws: int = 8000) -> torch.Tensor:
    verify, gen = sample_and_match(top_p), torch.Generator().manual_seed(0)
    counts = torch.zeros(p.shape[-1])
    for _ in range(draws):
        counts[verify(p, tree, 1.0, gen)[1][0]] += 1
    return counts / draws


P_ROOT = torch.tensor([0.5, 0.3, 0.15, 0.05])


@pytest.mark.fidelity(
    "rest",
    reference="the output law worked out from REST's released sample-and-match verification (one chain)",
    tolerance="abs 0.02 (8000 draws)",
)
def test_released_rule_on_a_chain_gives_the_draft_a_second_chance():
    """One draft token x = 0 after the root: the released code accepts it when the root's draw
    equals it (pn(x)), and after a rejection draws the next token afresh from pn, which can be x
    again: P(x) = pn(x) + (1 - pn(x)) pn(x), P(y) = (1 - pn(x)) pn(y)."""
    tree = Tree()
    tree.add(-1, 0)
    p = torch.stack([P_ROOT, torch.full((4,), 0.25)])
    pn = nucleus(P_ROOT, 0.8)  # {0.5, 0.3} kept: 0.625, 0.375
    want = (1 - pn[0]) * pn
    want[0] += pn[0]
    got = _first_token_law(tree, p, 0.8)
    assert torch.allclose(got, want, atol=0.02), (got, want)
    assert got[0] > P_ROOT[0] + 0.2  # not the target's distribution


@pytest.mark.fidelity(
    "rest",
    reference="the output law worked out from REST's released sample-and-match verification (two candidates)",
    tolerance="abs 0.02 (8000 draws)",
)
def test_released_rule_draws_once_per_candidate():
    """Two single-token candidates a = 0, b = 1: each draws its own token; a wins when its draw
    matches, else b when its own draw matches, else a fresh draw."""
    tree = Tree()
    tree.add(-1, 0), tree.add(-1, 1)
    p = torch.stack([P_ROOT, torch.full((4,), 0.25), torch.full((4,), 0.25)])
    pn = nucleus(P_ROOT, 0.95)
    both_miss = (1 - pn[0]) * (1 - pn[1])
    want = both_miss * pn
    want[0] += pn[0]
    want[1] += (1 - pn[0]) * pn[1]
    assert torch.allclose(_first_token_law(tree, p, 0.95), want, atol=0.02)


def test_exact_acceptance_is_the_default():
    assert REST().acceptance == "exact" and REST().top_p == 0.8
    with pytest.raises(ValueError, match="acceptance"):
        REST(acceptance="typical")
