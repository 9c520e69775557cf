"""Token-tree verification against slow references: one tree pass equals feeding each node's path
on its own; the verification rules keep the target's distribution; REST's retrieval equals a
brute-force search; DistillSpec's divergences equal their formulas; SpS's τ follows
(1 − α^(γ+1)) / (1 − α)."""

import random
from collections import Counter

import pytest
import torch

from harness.methods.spec._common import CachedModel, count_step, probs, verify_chain
from harness.methods.spec._tree import Tree, keep_path, tree_forward, tree_mask, verify_tree
from harness.methods.spec.distillspec import divergence
from harness.methods.spec.rest import Datastore, draft_tree


def random_tree(rng, n, vocab):
    tree = Tree()
    for _ in range(n):
        tree.add(rng.randrange(-1, len(tree)), rng.randrange(vocab), merge=False)
    return tree


def test_tree_mask_is_ancestor_relation():
    parents = [-1, -1, 0, 2, 1]
    mask = tree_mask(parents)
    expect = {0: {0}, 1: {1}, 2: {0, 2}, 3: {0, 2, 3}, 4: {1, 4}}
    for i, anc in expect.items():
        assert set(mask[i].nonzero().flatten().tolist()) == anc


@pytest.mark.parametrize("tail_len", [1, 3])
def test_one_pass_tree_equals_each_path_alone(tiny_lm, tail_len):
    """Logits after every node of a random tree, from one pass with the tree mask and depth
    positions, equal a plain forward of prefix + that node's path; pruning the cache to one path
    then continues exactly like full recomputation."""
    model, rng = tiny_lm.model, random.Random(0)
    prefix = [rng.randrange(5, 200) for _ in range(9)]
    tree = random_tree(rng, 12, 200)
    target = CachedModel(model)
    target.step(prefix[:-tail_len])
    logits = tree_forward(target, prefix[-tail_len:], tree)
    with torch.no_grad():
        full = lambda ids: model(input_ids=torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(logits[tail_len - 1], full(prefix), atol=1e-4, rtol=1e-4)
        for j in range(len(tree)):
            path = [tree.tokens[k] for k in tree.path(j)]
            torch.testing.assert_close(logits[tail_len + j], full(prefix + path), atol=1e-4, rtol=1e-4)
        deepest = max(range(len(tree)), key=lambda j: len(tree.path(j)))
        keep_path(target, len(prefix), tree.path(deepest))
        path = [tree.tokens[k] for k in tree.path(deepest)]
        torch.testing.assert_close(target.step([7])[-1], full(prefix + path + [7]), atol=1e-4, rtol=1e-4)


def _first_token_histogram(p, tree_of, n=8000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(p.shape[-1])
    for _ in range(n):
        tree = tree_of(gen)
        rows = torch.cat([p[None], p.expand(len(tree), -1)])
        _, new = verify_tree(rows, tree, 1.0, gen)
        counts[new[0]] += 1
    return counts / n


def _assert_matches(freq, p, n=8000):
    sigma = (p * (1 - p) / n).sqrt() + 1e-4
    assert torch.all((freq - p).abs() < 4.5 * sigma), (freq, p)


@pytest.mark.fidelity(
    "specinfer",
    reference="the target distribution p under multi-step speculative sampling, Monte Carlo",
    tolerance="4.5σ (8000 draws)",
)
def test_multi_step_speculative_sampling_keeps_the_target_distribution():
    """SpecInfer: three children sampled from q (duplicates merged, each tried once per draw)."""
    p = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])
    q = torch.tensor([0.1, 0.2, 0.5, 0.1, 0.1])

    def tree_of(gen):
        tree = Tree()
        for x in torch.multinomial(q, 3, replacement=True, generator=gen).tolist():
            tree.add(-1, x, q)
        return tree

    _assert_matches(_first_token_histogram(p, tree_of), p)


@pytest.mark.fidelity(
    "eagle",
    "eagle2",
    "rest",
    reference="the target distribution p for fixed top-k children verified with q = 1, Monte Carlo",
    tolerance="4.5σ (8000 draws)",
)
def test_deterministic_children_with_q_as_one_keep_the_target_distribution():
    """EAGLE / REST: fixed top-k children, accepted with p(x), else p(x) <- 0 and renormalise."""
    p = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])

    def tree_of(gen):
        tree = Tree()
        for x in (2, 0, 4):
            tree.add(-1, x)
        return tree

    _assert_matches(_first_token_histogram(p, tree_of), p)


def test_greedy_tree_verification_takes_the_longest_matching_path():
    tree = Tree()
    a = tree.add(-1, 3)
    b = tree.add(-1, 1)
    c = tree.add(b, 2)
    tree.add(a, 4)
    one_hot = lambda ids: torch.nn.functional.one_hot(torch.tensor(ids), 6).float()
    # target argmax: after root 1, after a anything, after b 2, after c 5
    p = one_hot([1, 0, 2, 5, 0])
    path, new = verify_tree(p, tree, 0.0)
    assert path == [b, c] and new == [1, 2, 5]


@pytest.mark.fidelity("rest", reference="brute-force suffix search over the datastore", tolerance="exact")
def test_suffix_array_and_lookup_equal_brute_force():
    rng = random.Random(1)
    tokens = [rng.randrange(4) for _ in range(400)]
    store = Datastore(tokens)
    assert store.sa.tolist() == sorted(range(len(tokens)), key=lambda i: tokens[i:])
    for _ in range(40):
        context = [rng.randrange(4) for _ in range(rng.randrange(2, 12))]
        span, found = store.lookup(context, max_span=6, length=3, cap=10**6)
        expect_span, expect = 0, []
        for s in range(min(6, len(context)), 1, -1):
            hits = [i for i in range(len(tokens) - s) if tokens[i : i + s] == context[-s:]]
            if hits:
                expect_span, expect = s, [tokens[i + s : i + s + 3] for i in hits]
                break
        assert span == expect_span and sorted(found) == sorted(expect)


def test_rest_trie_keeps_most_frequent_nodes_with_their_parents():
    conts = [[1, 2, 3]] * 5 + [[1, 2, 4]] * 3 + [[5, 6]] * 2 + [[1, 7]]
    tree = draft_tree(conts, num_draft=4)
    paths = {tuple(tree.tokens[k] for k in tree.path(j)) for j in range(len(tree))}
    assert paths == {(1,), (1, 2), (1, 2, 3), (1, 2, 4)}  # counts 9, 8, 5, 3 beat (5,):2


@pytest.mark.fidelity(
    "distillspec", reference="FKL, RKL, JSD(β) and TVD written out with math.log", tolerance="abs 1e-9"
)
def test_divergences_equal_their_formulas():
    rng = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 7, generator=rng, dtype=torch.float64), torch.randn(3, 7, generator=rng, dtype=torch.float64)
    for row in range(3):
        p, q = [float(x) for x in torch.softmax(a[row], -1)], [float(x) for x in torch.softmax(b[row], -1)]
        import math

        kl = lambda x, y: sum(xi * math.log(xi / yi) for xi, yi in zip(x, y))
        beta = 0.3
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        expect = {
            "fkl": kl(p, q),
            "rkl": kl(q, p),
            "jsd": beta * kl(p, m) + (1 - beta) * kl(q, m),
            "tvd": 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q)),
        }
        for name, value in expect.items():
            got = float(divergence(name, a[row], b[row], beta))
            assert abs(got - value) < 1e-9, (name, got, value)
        assert abs(expect["tvd"] - (1 - sum(min(pi, qi) for pi, qi in zip(p, q)))) < 1e-12  # α = 1 − TV


@pytest.mark.fidelity(
    "sps", reference="the analytic τ = (1 − α^(γ+1)) / (1 − α) (Leviathan et al.)", tolerance="rel 3 %; α̂ abs 0.015"
)
def test_sps_tau_follows_the_analytic_formula():
    """Context-free p and q make acceptance i.i.d. with α = Σ min(p, q): tokens per verification
    step average (1 − α^(γ+1)) / (1 − α), and the α̂ the task derives from count_step telemetry
    recovers α."""
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    gamma, steps, gen, tel = 4, 6000, torch.Generator().manual_seed(0), Counter()
    alpha = float(torch.minimum(p, q).sum())
    total = 0
    for _ in range(steps):
        chain = torch.multinomial(q, gamma, replacement=True, generator=gen).tolist()
        new, accepted = verify_chain(p.expand(gamma + 1, -1), q.expand(gamma, -1), chain, gen)
        count_step(tel, gamma, accepted)
        total += len(new)
    analytic = (1 - alpha ** (gamma + 1)) / (1 - alpha)
    assert abs(total / steps - analytic) < 0.03 * analytic
    a_hat = tel["accepted_draft_tokens"] / (tel["accepted_draft_tokens"] + tel["rejections"])
    assert abs(a_hat - alpha) < 0.015
    assert tel["tested_at_1"] == steps and tel["accepted_at_1"] <= steps


def test_probs_temperature_zero_is_one_hot():
    logits = torch.tensor([0.1, 2.0, -1.0])
    assert probs(logits, 0).tolist() == [0.0, 1.0, 0.0]
