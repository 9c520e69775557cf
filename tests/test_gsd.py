"""GSD (graph-structured speculative decoding): the merge rule and the unrolled verification tree
on hand-built graphs, greedy output equal to the target's own greedy decoding (a random draft and
the target itself as its own draft), and the target's distribution at T > 0."""

from collections import Counter

import pytest

from harness.interfaces import MethodContext
from harness.methods.spec.gsd import GSD, TokenGraph
from harness.methods.spec.specinfer import SpecInfer

TEXT = " The cost saim tulskited over the wal. Hina tulskited a brel cost."


def test_a_repeated_token_after_the_same_token_becomes_a_merge_edge():
    g = TokenGraph(root=0, repeat_threshold=1)
    a, b = g.add(-1, 1, False), g.add(-1, 2, False)  # root -> 1, root -> 2
    x = g.add(a, 5, False)  # 1 -> 5
    y = g.add(x, 7, False)  # 1 -> 5 -> 7
    assert g.add(b, 5, False) is not None  # 2 -> 5: preceded by 2, not 1: drafted again
    c = g.add(b, 1, False)  # 2 -> 1
    assert g.add(c, 5, False) is None  # 2 -> 1 -> 5 repeats "1 5": merged into node x
    assert g.pseudo == {c: [x]}
    tree, merged = g.unroll(100)
    paths = {tuple(tree.tokens[j] for j in tree.path(k)) for k in range(len(tree))}
    assert (2, 1, 5, 7) in paths and (1, 5, 7) in paths  # the shared subtree is verified under both
    assert {tuple(tree.tokens[j] for j in tree.path(k)) for k in merged} == {(2, 1, 5), (2, 1, 5, 7)}
    assert y is not None and len(tree) == len(g.tree) + 2


def test_merging_needs_matching_context_and_can_be_disabled():
    g = TokenGraph(root=0, repeat_threshold=0)  # threshold 0: the token alone
    a, b = g.add(-1, 1, False), g.add(-1, 2, False)
    g.add(a, 5, False)
    assert g.add(b, 5, False) is None
    off = TokenGraph(root=0, repeat_threshold=-1)
    a, b = off.add(-1, 1, False), off.add(-1, 2, False)
    off.add(a, 5, False)
    assert off.add(b, 5, False) is not None and not off.pseudo
    deep = TokenGraph(root=0, repeat_threshold=2)  # two preceding tokens must match
    a, b = deep.add(-1, 1, False), deep.add(-1, 2, False)
    deep.add(a, 5, False)
    c = deep.add(b, 1, False)
    assert deep.add(c, 5, False) is not None  # "2 1 5" vs "0 1 5"


def test_unrolled_tree_respects_the_node_cap_breadth_first():
    g = TokenGraph(root=0)
    level = [g.add(-1, t, False) for t in (1, 2, 3)]
    g.add(level[0], 9, False)  # depth 2: after every depth-1 node
    tree, _ = g.unroll(3)
    assert tree.tokens == [1, 2, 3] and tree.parents == [-1, -1, -1]


@pytest.mark.fidelity(
    "gsd", reference="the target's own greedy decoding (LM.generate without a method)", tolerance="exact tokens"
)
@pytest.mark.parametrize("self_draft", [False, True])
def test_greedy_output_equals_the_targets_greedy_output(tiny_lm, tiny_model, tiny_model_with, self_draft):
    prompts = [tiny_lm.encode(TEXT), tiny_lm.encode(" Hina tulskited.")]
    plain = tiny_lm.generate(prompts, max_new_tokens=16)
    method = GSD(draft=tiny_model if self_draft else tiny_model_with(seed=7), max_depth=4, max_nodes=24)
    before = Counter(tiny_lm.telemetry)
    with method.apply(tiny_lm, MethodContext()):
        spec = tiny_lm.generate(prompts, max_new_tokens=16)
        assert method.check_effect(tiny_lm, MethodContext(), None) is None
    assert spec == plain
    tel = Counter(tiny_lm.telemetry)
    tel.subtract(before)
    assert tel["forward_calls"] <= sum(len(x) for x in spec)
    if self_draft:  # the target drafting for itself: its top-1 path is always accepted
        assert tel["accepted_draft_tokens"] > 0 and tel["forward_calls"] < sum(len(x) for x in spec)


@pytest.mark.fidelity(
    "gsd",
    reference="the target's exact next-token distribution (histograms of sampled tokens)",
    tolerance="G-test p > 0.001",
)
def test_sampled_tokens_follow_the_targets_distribution(tiny_lm, tiny_model_with):
    from types import SimpleNamespace

    from harness.tasks.spec_acceptance import SpecAcceptance

    task = SpecAcceptance(sampling_seeds=60, sampling_tokens=2, sampling_prefixes=1)
    method = GSD(draft=tiny_model_with(seed=7), max_depth=3, max_nodes=16)
    with method.apply(tiny_lm, MethodContext()):
        result = task._distribution_test(SimpleNamespace(lm=tiny_lm, seed=0), [("p", tiny_lm.encode(TEXT))], 0.1)
    assert result["groups"] and result["p_value"] > 1e-3, result


def test_same_draft_budget_as_specinfer_is_verified_in_one_forward_per_step(tiny_lm, tiny_model):
    """Both methods on the same self-draft: every step is one target forward and τ > 1."""
    prompt = [tiny_lm.encode(TEXT)]
    for method in (
        GSD(draft=tiny_model, max_depth=4, max_nodes=16),
        SpecInfer(drafts=(tiny_model,), expansion=(2, 2, 1, 1)),
    ):
        before = Counter(tiny_lm.telemetry)
        with method.apply(tiny_lm, MethodContext()):
            out = tiny_lm.generate(prompt, max_new_tokens=16)[0]
        tel = Counter(tiny_lm.telemetry)
        tel.subtract(before)
        assert tel["target_forwards"] == tel["spec_steps"] + 1 and len(out) / tel["target_forwards"] > 1
