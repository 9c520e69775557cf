"""Each eviction-scoring kv method against an independent reference: transformers' eager
attention probabilities, a slow loop over tokens and heads, or the closed-form formula.
The others: test_kv_rerotation.py, test_kv_merging.py, test_kv_quant_lowrank.py, test_kv_kvpress.py."""

import pytest
import torch

from harness import registry
from harness.interfaces import MethodContext
from harness.methods.kv.fastgen import candidate_masks
from harness.methods.kv.keyformer import gumbel_probs
from harness.methods.kv.snapkv import snapkv_scores
from harness.lm import KVRequest
from tests import kv_helpers
from tests.kv_helpers import N, method, per_kv_head, run_with, scored_run

registry.load()
ids, eager = kv_helpers.ids, kv_helpers.eager  # the module fixtures the kv test files share


def test_cache_holds_the_models_own_keys_and_values(tiny_lm, ids, eager):
    run = scored_run(tiny_lm, method("h2o"), ids)
    for (k, v), lc in zip(eager[1], run.layers.values()):
        assert torch.allclose(lc.k, k, atol=1e-5) and torch.allclose(lc.v, v, atol=1e-5)


@pytest.mark.fidelity(
    "h2o",
    reference="transformers' eager attention summed over queries; the heavy + recent kept set by a slow sort",
    tolerance="abs 1e-4; exact kept set",
)
def test_h2o_score_is_accumulated_eager_attention(tiny_lm, ids, eager):
    run = scored_run(tiny_lm, method("h2o"), ids)
    for att, lc in zip(eager[0], run.layers.values()):
        ref = per_kv_head(att.sum(2), lc.k.shape[1])  # Σ_t A_{t,j}
        assert torch.allclose(lc.score, ref, atol=1e-4)
    lc = run.layers[0]
    m, window = 20, 10
    scores = lc.score.clone()
    from harness.methods.kv.h2o import evict_heavy_recent

    evict_heavy_recent(lc, m, 0.5)
    for h in range(lc.k.shape[1]):  # slow reference: the 10 newest + the 10 best of the rest
        rest = sorted(range(N - window), key=lambda j: -float(scores[0, h, j]))[: m - window]
        assert sorted(lc.pos[0, h].tolist()) == sorted(rest + list(range(N - window, N)))


@pytest.mark.fidelity(
    "scissorhands",
    reference="slow loop over transformers' eager attention (A ≥ 1/t in the history window)",
    tolerance="exact counts",
)
def test_scissorhands_counts_are_windowed_persistence(tiny_lm, ids, eager):
    w = 30
    run = scored_run(tiny_lm, method("scissorhands", history_window=w), ids)
    m = method("scissorhands", history_window=w)
    for att, lc in zip(eager[0], run.layers.values()):
        hkv = lc.k.shape[1]
        ref = torch.zeros(1, hkv, N)
        for t in range(N - w, N):  # slow loop: queries of the history window
            for h in range(att.shape[1]):
                ref[0, h // (att.shape[1] // hkv)] += (att[0, h, t, :] >= 1.0 / (t + 1)).float()
        assert torch.equal(m.counts(lc), ref)


def test_running_statistics_equal_their_recomputation_while_decoding(tiny_lm, ids):
    """Scissorhands' count and VATP's ‖v‖₁ are updated per step, not recomputed: after evictions
    and a history ring that wrapped, they equal the ring's row sums and the cached values' norms."""
    from harness.methods.kv.vatp import value_l1

    for name, args in (("scissorhands", {"history_window": 7}), ("vatp", {})):
        with method(name, **args).apply(tiny_lm, MethodContext()) as driver:
            tiny_lm.kv_request = KVRequest(budget=0.3)
            run = driver.start()
            driver.prefill(run, ids, all_logits=False)
            for t in range(10):
                driver.decode(run, [ids[t]])
            driver.decode(run, ids[10:14])
            tiny_lm.kv_request = KVRequest()
        for lc in run.layers.values():
            assert lc.n == 29
            if name == "scissorhands":
                ring = lc.slot("history", 0, torch.uint8, (7,))
                assert torch.equal(lc.slot("count", 0, torch.int32), ring.sum(-1, dtype=torch.int32))
                assert ring.sum() > 0
            else:
                assert torch.allclose(value_l1(lc), lc.v.abs().sum(-1))


@pytest.mark.fidelity(
    "vatp",
    reference="transformers' eager attention summed over queries times the values' L1 norm",
    tolerance="abs 1e-4",
)
def test_vatp_scores_weight_attention_by_value_norm(tiny_lm, ids, eager):
    from harness.methods.kv.vatp import vatp_scores

    run = scored_run(tiny_lm, method("vatp"), ids)
    for att, (k, v), lc in zip(eager[0], eager[1], run.layers.values()):
        ref = per_kv_head(att.sum(2), lc.k.shape[1]) * v.abs().sum(-1)
        assert torch.allclose(vatp_scores(lc), ref, atol=1e-4)
        assert torch.allclose(vatp_scores(lc, 5, 9), ref[..., 5:9], atol=1e-4)


@pytest.mark.fidelity(
    "snapkv",
    reference="slow loop: observation-window softmax, mean, zero-padded average pooling, mean over each KV head's queries",
    tolerance="abs 1e-6",
)
def test_snapkv_scores_match_a_slow_loop(tiny_lm, eager):
    torch.manual_seed(0)
    hq, hkv, n, d, w, kernel = 4, 2, 40, 8, 6, 5
    q, k = torch.randn(1, hq, w, d), torch.randn(1, hkv, n, d)
    got = snapkv_scores(q, k, 0.3, kernel, "avgpool")
    ref = torch.zeros(1, hkv, n - w)
    for h in range(hq):
        kh = k[0, h // (hq // hkv)]
        acc = torch.zeros(n - w)
        for i in range(w):  # window query i sees keys up to n - w + i
            logits = (q[0, h, i] @ kh[: n - w + i + 1].T) * 0.3
            acc += torch.softmax(logits, -1)[: n - w]
        acc /= w
        padded = torch.cat([torch.zeros(kernel // 2), acc, torch.zeros(kernel // 2)])
        pooled = torch.stack([padded[j : j + kernel].sum() / kernel for j in range(n - w)])
        ref[0, h // (hq // hkv)] += pooled / (hq // hkv)
    assert torch.allclose(got[..., : n - w], ref, atol=1e-6)
    assert torch.all(got[..., n - w :] == got.max())


@pytest.mark.fidelity(
    "keyformer",
    reference="the paper's softmax((x + ζ)/τ), ζ = −log(−log u), written out on the same draws",
    tolerance="exact",
)
def test_keyformer_gumbel_probs_equal_the_formula_with_the_same_draws():
    """softmax((x + ζ)/τ), ζ = −log(−log u), u ~ U(0, 1) from the run's generator: the in-place
    computation gives exactly the out-of-place formula's numbers (the records depend on them)."""
    x = torch.randn(1, 2, 1, 3, 50)
    for tau in (1.0, 1.7):
        u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4)).clamp(1e-20, 1.0)
        ref = torch.softmax((x + -torch.log((-torch.log(u)).clamp(min=1e-20))) / tau, dim=-1)
        assert torch.equal(gumbel_probs(x, tau, torch.Generator().manual_seed(4)), ref)


@pytest.mark.fidelity(
    "keyformer",
    reference="the Gumbel-max trick (argmax frequencies at τ → 0 equal softmax(x)); the τ schedule worked by hand",
    tolerance="abs 0.03 (4000 draws)",
)
def test_keyformer_gumbel_scores_follow_the_gumbel_max_distribution():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    gen = torch.Generator().manual_seed(0)
    hard = torch.stack([gumbel_probs(logits, 1e-3, gen).argmax(-1) for _ in range(4000)]).flatten()
    freq = torch.bincount(hard, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.softmax(logits, -1)[0], atol=0.03)  # Gumbel-max trick
    m = method("keyformer")

    class R:
        phase, step, max_new = "decode", 5, 10

    assert m.tau(R) == pytest.approx(1.5)  # τ_init + step·(τ_end − τ_init)/max_new


@pytest.mark.fidelity(
    "fastgen",
    reference="the kept sets of the four policies (special, +punct, +frequency, +local) worked by hand",
    tolerance="exact sets",
)
def test_fastgen_picks_the_first_policy_that_recovers_the_mass():
    n, m = 20, 8
    special = torch.zeros(1, 2, n, dtype=torch.bool)
    special[..., :2] = True
    punct = torch.zeros_like(special)
    punct[..., 5] = True
    score = torch.rand(1, 2, n)
    local = torch.zeros_like(special)
    local[..., -4:] = True
    masks = candidate_masks(special, punct, score, local, 2, m)
    assert [int(x[0, 0].sum()) for x in masks] == [2, 3, 3, 8]  # frequency: heavy 2 cap already met by special+punct
    last = masks[-1][0, 0]
    assert last[-4:].all() and last[:2].all() and last[5]
    rest = [j for j in range(2, n - 4) if j != 5]
    best = sorted(rest, key=lambda j: -float(score[0, 0, j]))[:1]
    assert set(torch.nonzero(last).flatten().tolist()) == {0, 1, 5, *best, n - 4, n - 3, n - 2, n - 1}


def test_fastgen_local_policy_takes_the_newest_when_the_window_overflows_the_room():
    """Ties in the ranking (the local window's tokens all rank +inf) go to the newest slots, so
    the choice does not depend on the device's sort: with room for 2 of a 6-token window, the 2
    newest."""
    n, m = 16, 6
    special = torch.zeros(1, 1, n, dtype=torch.bool)
    special[..., :2] = True
    score = torch.zeros(1, 1, n)
    score[..., 4], score[..., 6] = 5.0, 4.0  # the heavy hitters, outside the window
    local = torch.zeros_like(special)
    local[..., -6:] = True
    masks = candidate_masks(special, torch.zeros_like(special), score, local, 4, m)
    assert torch.nonzero(masks[2][0, 0]).flatten().tolist() == [0, 1, 4, 6]  # frequency fills to 4
    assert torch.nonzero(masks[3][0, 0]).flatten().tolist() == [0, 1, 4, 6, n - 2, n - 1]


def test_fastgen_masks_heads_to_their_policy(tiny_lm, ids):
    run = run_with(tiny_lm, method("fastgen", budget_rule="cap", min_recovery=0.5), ids, 0.5)
    for lc in run.layers.values():
        assert lc.valid is not None and len(lc.state["policies"]) == lc.k.shape[1]
        assert (lc.valid.sum(-1) <= 48).all()


def test_fastgen_keeps_applying_each_heads_policy_while_decoding(tiny_lm):
    """Each (layer, head) is given one of the four policies after the prefill; while 32 tokens of
    words and punctuation are decoded, every head stays within the budget and keeps what its policy
    says: a "special" head only special tokens, "+punct" only special or punctuation (and every
    decoded punctuation token), "+frequency" at most heavy_hitter_frac of the budget of other
    tokens, "+local" the newest tokens and no more than that many others outside its window."""
    from harness.methods.kv.fastgen import POLICIES

    tok = tiny_lm.tokenizer
    n0, m = 64, 32
    heavy, window = int(m * 0.3), m - int(m * 0.3)
    vocab = {i: t.replace("▁", "").replace("Ġ", "") for t, i in tok.get_vocab().items()}
    words = sorted(i for i, t in vocab.items() if t.isalpha() and i not in tok.all_special_ids)[:40]
    puncts = sorted(i for i, t in vocab.items() if t in (",", ".", ";", "!", "?"))
    ids = [tok.bos_token_id or words[0]] + [puncts[j % len(puncts)] if j % 6 == 5 else words[j % 40] for j in range(95)]
    is_special = [p < 4 or ids[p] in tok.all_special_ids for p in range(len(ids))]
    is_punct = [ids[p] in puncts for p in range(len(ids))]
    fg = method("fastgen", budget_rule="cap")
    with fg.apply(tiny_lm, MethodContext()) as driver:
        tiny_lm.kv_request = KVRequest(budget=float(m))
        run = driver.start()
        driver.prefill(run, ids[:n0], all_logits=False)
        for i, lc in enumerate(run.layers.values()):
            lc.state["policies"] = [POLICIES[2 * i], POLICIES[2 * i + 1]]
        for step, t in enumerate(ids[n0:]):
            driver.decode(run, [t])
            newest = n0 + step
            for lc in run.layers.values():
                for h, policy in enumerate(lc.state["policies"]):
                    kept = lc.pos[0, h][lc.valid[0, h]].tolist()
                    other = [p for p in kept if not (is_special[p] or is_punct[p])]
                    assert len(kept) <= m, (step, policy)
                    if policy == "special":
                        assert all(is_special[p] for p in kept), (step, policy)
                    elif policy == "special+punct":
                        assert not other and all(p in kept for p in range(n0, newest + 1) if is_punct[p]), step
                    elif policy == "special+punct+frequency":
                        assert len(other) <= heavy, (step, policy)
                    else:
                        assert newest in kept and len([p for p in other if p <= newest - window]) <= heavy, (
                            step,
                            len(kept),
                            kept,
                            other,
                        )
        tiny_lm.kv_request = KVRequest()


def fastgen_prompt(lm, n=160):
    from harness.synthetic import EVAL_SEED_BASE, Corpus

    ids, corpus = [], Corpus(EVAL_SEED_BASE + 7)
    while len(ids) < n:
        ids += lm.encode(" " + corpus.text(20))
    return ids[:n]


def test_fastgen_target_rule_keeps_the_budget(tiny_lm):
    """budget_rule "target" (the default): the kept fraction after profiling is within 0.05 of the
    budget, never above it, and rises with the budget; the threshold it chose is in the telemetry."""
    ids = fastgen_prompt(tiny_lm)
    kept = []
    for budget in (0.25, 0.5, 0.95):
        before = dict(tiny_lm.telemetry)
        run = run_with(tiny_lm, method("fastgen"), ids, budget)
        frac = run.kept_tokens() / len(ids)
        assert budget - 0.05 <= frac <= budget + 1e-9, (budget, frac)
        t = tiny_lm.telemetry
        assert t[f"kv.fastgen_profiles@{budget:g}"] - before.get(f"kv.fastgen_profiles@{budget:g}", 0) == 1
        assert t[f"kv.fastgen_kept@{budget:g}"] - before.get(f"kv.fastgen_kept@{budget:g}", 0) == pytest.approx(frac)
        kept.append(frac)
    assert kept == sorted(kept)


def test_fastgen_cap_rule_is_the_budget_capped_profile(tiny_lm):
    """budget_rule "cap": T = min_recovery, every head at most the budget (the earlier behaviour)."""
    ids = fastgen_prompt(tiny_lm)
    run = run_with(tiny_lm, method("fastgen", budget_rule="cap"), ids, 0.5)
    assert run.kept_tokens() / len(ids) <= 0.5 + 1e-9
    assert all("full" not in lc.state["policies"] for lc in run.layers.values())


def test_fastgen_threshold_bisection_equals_a_brute_force_scan(tiny_lm):
    """threshold_for against a scan of every threshold on a 0.0005 grid and at every recovery
    value, each head's choice made by a plain loop: the same best kept fraction at most the target
    (on a real profile of the zoo model and on random nested profiles)."""
    from harness.methods.kv.fastgen import threshold_for

    def literal_kept(recovered, sizes, t):
        p, rest = recovered.shape[0], recovered.shape[1:].numel()
        rec, siz, total = recovered.reshape(p, rest), sizes.reshape(p, rest), 0.0
        for h in range(rest):
            first = next((i for i in range(p) if float(rec[i, h]) >= t), p - 1)
            total += float(siz[first, h])
        return total / rest

    fg = method("fastgen")
    captured = {}
    orig = type(fg).profile_prompt

    def spy(self, run):
        profiles = [self.profile(lc, run) for lc in run.layers.values()]
        n = next(iter(run.layers.values())).n
        captured["recovered"] = torch.cat([r for _, r, _ in profiles], dim=1)
        captured["sizes"] = torch.cat([torch.stack([mk.sum(-1) for mk in m]) for m, _, _ in profiles], dim=1) / n
        orig(self, run)

    type(fg).profile_prompt = spy
    try:
        run_with(tiny_lm, fg, fastgen_prompt(tiny_lm), 0.5)
    finally:
        type(fg).profile_prompt = orig
    g = torch.Generator().manual_seed(0)
    cases = [(captured["recovered"], captured["sizes"].float())]
    for _ in range(3):
        rec = torch.rand(5, 4, 4, generator=g).sort(dim=0).values
        rec[-1] = 1.0
        cases.append((rec, torch.rand(5, 4, 4, generator=g).sort(dim=0).values))
    for recovered, sizes in cases:
        grid = sorted({i / 2000 for i in range(2001)} | {float(v) for v in recovered.flatten()})
        for target in (0.1, 0.25, 0.5, 0.75, 0.95):
            t, kept = threshold_for(recovered, sizes, target)
            assert kept == pytest.approx(literal_kept(recovered, sizes, t), abs=1e-6)
            feasible = [k for k in (literal_kept(recovered, sizes, x) for x in grid) if k <= target]
            if feasible:
                assert kept == pytest.approx(max(feasible), abs=1e-6), (target, t)
            else:  # nothing fits: the cheapest choice, T = 0
                assert t == 0.0


def test_fastgen_target_rule_keeps_the_profiles_sizes_while_decoding(tiny_lm):
    """budget_rule "target" while decoding: a "full" head keeps every token, the others at most the
    profile's +local size (heavy_hitter_frac + recent_frac of the prompt), and "+local" heads the newest."""
    ids = fastgen_prompt(tiny_lm, 176)
    n0 = 160
    run = run_with(tiny_lm, method("fastgen"), ids[:n0], 0.5, decode=ids[n0:])
    size = round(0.6 * n0)
    for lc in run.layers.values():
        assert lc.state["sizes"] == (round(0.3 * n0), size)
        for h, policy in enumerate(lc.state["policies"]):
            kept = lc.pos[0, h][lc.valid[0, h]].tolist()
            if policy == "full":
                assert sorted(kept) == list(range(len(ids)))
            else:
                assert len(kept) <= size, policy
            if policy.endswith("local"):
                assert len(ids) - 1 in kept


def test_fastgen_classifies_ids_past_the_tokenizer_as_plain_tokens():
    """Models pad their embedding past the tokenizer's vocabulary (Llama 3: 128,256 rows), and a
    random or weak model generates such ids: they are neither special nor punctuation (seen on a
    random Llama-3-shaped model, where the lookup ran off the tokenizer's table)."""
    from harness.methods.kv.fastgen import _lookup

    table = torch.tensor([True, False, False, True])
    assert _lookup(table, torch.tensor([[0, 3, 4, 100, 1]])).tolist() == [[True, True, False, False, False]]
