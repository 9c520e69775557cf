"""Each kv method against an independent reference: transformers' eager attention probabilities,
a slow loop over tokens and heads, the closed-form formula, or kvpress's matching press."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from harness import params, registry
from harness.interfaces import MethodContext
from harness.methods.kv import _common
from harness.methods.kv.cam import CaM, merge_probability
from harness.methods.kv.fastgen import candidate_masks
from harness.methods.kv.gear import outliers, power_low_rank
from harness.methods.kv.keyformer import gumbel_probs
from harness.methods.kv.kvmerger import gaussian_merge, nearest_kept
from harness.methods.kv.snapkv import snapkv_scores
from harness.methods.kv.svd_kv import low_rank_weight
from harness.lm import KVRequest

registry.load()
N = 96


def method(name, **args):
    return params.build(registry.method(name), {k: str(v) for k, v in args.items()}, name)


@pytest.fixture(scope="module")
def ids(tiny_lm):
    words = " ".join(
        f"the {a} saw a {b} , then left ."
        for a, b in zip(["cat", "dog", "fox", "owl"] * 30, ["mat", "log", "box", "hat"] * 30)
    )
    return tiny_lm.encode(words)[:N]


@pytest.fixture(scope="module")
def eager(tiny_lm, ids):
    """Dense reference: eager attention probabilities [L][1, H, n, n] and the post-RoPE K/V cache."""
    model = tiny_lm.model
    model.set_attn_implementation("eager")
    try:
        cache = DynamicCache()
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    return out.attentions, [(layer.keys, layer.values) for layer in cache.layers]


def scored_run(lm, m, ids, budget=0.5):
    """Prefill with the method's statistics but no eviction: its per-token scores, uncompressed."""
    orig = type(m).compress_prefill
    type(m).compress_prefill = lambda self, lc, run: None
    try:
        with m.apply(lm, MethodContext()) as driver:
            lm.kv_request = KVRequest(budget=budget)
            run = driver.start()
            driver.prefill(run, ids, all_logits=False)
            lm.kv_request = KVRequest()
    finally:
        type(m).compress_prefill = orig
    return run


def per_kv_head(x, hkv):  # [1, H, ...] summed over each KV head's query heads
    return x.reshape(1, hkv, -1, *x.shape[2:]).sum(2)


def test_cache_holds_the_models_own_keys_and_values(tiny_lm, ids, eager):
    run = scored_run(tiny_lm, method("h2o"), ids)
    for (k, v), lc in zip(eager[1], run.layers.values()):
        assert torch.allclose(lc.k, k, atol=1e-5) and torch.allclose(lc.v, v, atol=1e-5)


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


def test_vatp_scores_weight_attention_by_value_norm(tiny_lm, ids, eager):
    from harness.methods.kv.vatp import vatp_scores

    run = scored_run(tiny_lm, method("vatp"), ids)
    for att, (k, v), lc in zip(eager[0], eager[1], run.layers.values()):
        ref = per_kv_head(att.sum(2), lc.k.shape[1]) * v.abs().sum(-1)
        assert torch.allclose(vatp_scores(lc), ref, atol=1e-4)
        assert torch.allclose(vatp_scores(lc, 5, 9), ref[..., 5:9], atol=1e-4)


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


def test_streaming_llm_keys_equal_keys_rotated_at_cache_positions(tiny_lm, ids, eager):
    """pos_shift semantics: the kept keys are the model's keys at contiguous positions 0..m-1."""
    m_keep = 24
    run = scored_run(tiny_lm, method("streaming_llm"), ids)  # uncompressed, then evict by hand
    rotary = _common._rotary_module(tiny_lm.model)
    for (k_ref, _), lc in zip(eager[1], run.layers.values()):
        method("streaming_llm").evict(lc, m_keep, run)
        kept = list(range(4)) + list(range(N - (m_keep - 4), N))
        assert lc.pos[0, 0].tolist() == kept
        # un-rotate the reference keys from their original positions, rotate at 0..m-1
        cos_o, sin_o = rotary(k_ref, torch.tensor([kept]))
        raw, _ = apply_rotary_pos_emb(k_ref[:, :, kept], k_ref[:, :, kept], cos_o, -sin_o)
        cos_n, sin_n = rotary(k_ref, torch.arange(m_keep)[None])
        expect, _ = apply_rotary_pos_emb(raw, raw, cos_n, sin_n)
        assert torch.allclose(lc.k, expect, atol=1e-4)


def test_streaming_llm_decodes_at_the_cache_length(tiny_lm, ids):
    m = method("streaming_llm")
    with m.apply(tiny_lm, MethodContext()) as driver:
        tiny_lm.kv_request = KVRequest(budget=0.25)
        run = driver.start()
        driver.prefill(run, ids, all_logits=False)
        assert run.positions(1).tolist() == [24]
        driver.decode(run, [ids[0]])
        tiny_lm.kv_request = KVRequest()
    lc = run.layers[0]
    assert lc.n == 24 and sorted(lc.pos[0, 0].tolist()) == [0, 1, 2, 3] + list(range(N - 19, N + 1))


def test_streaming_llm_decoding_equals_rerotating_every_step(tiny_lm, ids):
    """The deferred window shift (RoPE of the fed tokens advanced, sinks re-rotated) gives the logits
    of pos_shift's re-rotation of every kept key at every step: transformers' own cache, evicted and
    re-rotated to cache positions 0..m-1 after each fed token (and after a 5-token chunk)."""
    rotary, model, s, m = _common._rotary_module(tiny_lm.model), tiny_lm.model, 4, 24
    feeds = [[t] for t in ids[:12]] + [ids[12:17]] + [[t] for t in ids[17:30]]
    with method("streaming_llm").apply(tiny_lm, MethodContext()) as driver:
        tiny_lm.kv_request = KVRequest(budget=m)
        run = driver.start()
        driver.prefill(run, ids, all_logits=False)
        ours = torch.stack([driver.decode(run, f)[-1] for f in feeds])
        tiny_lm.kv_request = KVRequest()
    assert run.all_layers().state["shift"] == 30  # the window moved 30 positions, never re-rotated

    def rerotated(k, old, new):
        cos, sin = rotary(k, torch.tensor([old]))
        raw, _ = apply_rotary_pos_emb(k, k, cos, -sin)
        cos, sin = rotary(k, torch.tensor([new]))
        return apply_rotary_pos_emb(raw, raw, cos, sin)[0]

    def evict(cache):
        for layer in cache.layers:
            n = layer.keys.shape[2]
            keep = list(range(s)) + list(range(n - (m - s), n))
            layer.keys, layer.values = rerotated(layer.keys[:, :, keep], keep, list(range(m))), layer.values[:, :, keep]

    cache, ref = DynamicCache(), []
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
        evict(cache)
        for f in feeds:
            out = model(
                input_ids=torch.tensor([f]),
                past_key_values=cache,
                use_cache=True,
                position_ids=torch.arange(m, m + len(f))[None],
            )
            evict(cache)
            ref.append(out.logits[0, -1])
    assert torch.allclose(ours, torch.stack(ref), atol=1e-4)


def test_keyformer_gumbel_probs_equal_the_formula_with_the_same_draws():
    """softmax((x + ζ)/τ), ζ = −log(−log u), u ~ U(0, 1) from the run's generator: the in-place
    computation gives exactly the out-of-place formula's numbers (the records depend on them)."""
    x = torch.randn(1, 2, 1, 3, 50)
    for tau in (1.0, 1.7):
        u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4)).clamp(1e-20, 1.0)
        ref = torch.softmax((x + -torch.log((-torch.log(u)).clamp(min=1e-20))) / tau, dim=-1)
        assert torch.equal(gumbel_probs(x, tau, torch.Generator().manual_seed(4)), ref)


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


def test_cam_prefill_merge_matches_a_slow_loop():
    torch.manual_seed(0)
    n, m, d = 40, 10, 3
    lc = _common.LayerCache(torch.zeros(1, 2, 0, d))
    lc.append(torch.randn(1, 2, n, d), torch.randn(1, 2, n, d), torch.arange(n).expand(1, 2, n))
    lc.add_score(torch.rand(1, 2, n))
    v0, s0 = lc.v.clone(), lc.score.clone()

    class R:
        target, generator = m, torch.Generator().manual_seed(3)

    cam = CaM(merge_budget=4)
    cam.compress_prefill(lc, R)
    start, rec = cam.split(m)
    draws = torch.bernoulli(
        ((s0[:, :, start : n - rec] / s0[:, :, n - rec :].mean(-1, keepdim=True)).clamp(0, 1)),
        generator=torch.Generator().manual_seed(3),
    )
    ref = v0.clone()
    for h in range(2):
        for e, t in enumerate(range(start, n - rec)):
            for r in range(t + 1, min(n, t + 5)):
                ref[0, h, r] += draws[0, h, e] * v0[0, h, t] / 4
    keep = list(range(start)) + list(range(n - rec, n))
    assert torch.allclose(lc.v, ref[:, :, keep], atol=1e-6)


def test_cam_decoding_merges_the_leaving_token_into_the_next_ones():
    torch.manual_seed(0)
    m, d = 10, 3
    lc = _common.LayerCache(torch.zeros(1, 2, 0, d))
    lc.append(torch.randn(1, 2, m + 1, d), torch.randn(1, 2, m + 1, d), torch.arange(m + 1).expand(1, 2, m + 1))
    lc.add_score(torch.rand(1, 2, m + 1))
    k0, v0, s0 = lc.k.clone(), lc.v.clone(), lc.score.clone()

    class R:
        target, generator = m, torch.Generator().manual_seed(3)

    cam = CaM(merge_budget=4)
    cam.compress_decode(lc, R)
    e = cam.split(m)[0]  # the recent window's oldest token leaves
    draws = torch.bernoulli(
        (s0[:, :, e] / s0[:, :, e + 1 :].mean(-1)).clamp(0, 1), generator=torch.Generator().manual_seed(3)
    )
    ref = v0.clone()
    for h in range(2):
        for r in range(e + 1, e + 5):
            ref[0, h, r] += draws[0, h] * v0[0, h, e] / 4
    keep = [j for j in range(m + 1) if j != e]
    assert lc.n == m and lc.pos[0, 0].tolist() == keep
    assert torch.allclose(lc.v, ref[:, :, keep], atol=1e-6) and torch.equal(lc.k, k0[:, :, keep])
    assert torch.equal(lc.score, s0[:, :, keep])


def test_kvmerger_gaussian_merge_matches_a_slow_loop():
    torch.manual_seed(1)
    n, d = 12, 4
    base = torch.randn(1, 1, 1, d)
    k = base + 0.3 * torch.randn(1, 1, n, d)
    v = torch.randn(1, 1, n, d)
    kept = torch.zeros(1, 1, n, dtype=torch.bool)
    kept[0, 0, [2, 7, 11]] = True
    target = nearest_kept(kept)
    sim = F.cosine_similarity(k, k.gather(2, target.unsqueeze(-1).expand_as(k)), dim=-1)
    mk, mv = gaussian_merge(k, v, kept, target, sim, 0.75)
    for p in (2, 7, 11):
        members = [i for i in range(n) if not kept[0, 0, i] and int(target[0, 0, i]) == p and sim[0, 0, i] >= 0.75]
        d2 = [float(((k[0, 0, p] - k[0, 0, i]) ** 2).sum()) for i in members]
        sigma2 = max(sum(d2) / len(d2), 1e-12) if members else 1.0
        g = [1.0] + [math.exp(-x / (2 * sigma2)) for x in d2]
        rows = [p] + members
        ek = sum(gi * k[0, 0, i] for gi, i in zip(g, rows)) / sum(g)
        ev = sum(gi * v[0, 0, i] for gi, i in zip(g, rows)) / sum(g)
        assert torch.allclose(mk[0, 0, p], ek, atol=1e-5) and torch.allclose(mv[0, 0, p], ev, atol=1e-5)
    assert target[0, 0].tolist() == [2, 2, 2, 2, 2, 7, 7, 7, 7, 7, 11, 11]  # nearest kept, left on ties


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
    run = _run(tiny_lm, method("fastgen", min_recovery=0.5), ids, 0.5)
    for lc in run.layers.values():
        assert lc.valid is not None and len(lc.state["policies"]) == lc.k.shape[1]
        assert (lc.valid.sum(-1) <= 48).all()


def _run(lm, m, ids, budget, decode=(), modifier=None):
    import contextlib

    with (
        m.apply(lm, MethodContext()) as driver,
        modifier.apply(lm, MethodContext()) if modifier else contextlib.nullcontext(),
    ):
        lm.kv_request = KVRequest(budget=budget)
        run = driver.start()
        driver.prefill(run, ids, all_logits=False)
        for t in decode:
            driver.decode(run, [t])
        lm.kv_request = KVRequest()
    return run


def test_quantization_round_trip_and_error_bound():
    levels = torch.tensor([0.0, 1.0, 2.0, 3.0]) * 0.5 - 0.25  # exactly on a 2-bit grid
    x = levels[torch.randint(0, 4, (1, 2, 32, 8))]
    x[..., 0, :], x[..., 1, :] = -0.25, 1.25  # every group spans the grid
    assert torch.equal(_common.quantize_groups(x, 2, 32, "token"), x)
    y = torch.randn(1, 2, 64, 8)
    for axis, dim in (("token", 3), ("channel", 4)):
        q = _common.quantize_groups(y, 2, 8 if axis == "channel" else 32, axis)
        g = y.reshape(1, 2, 2, 32, 8) if axis == "token" else y.reshape(1, 2, 64, 1, 8)
        step = (g.amax(dim, keepdim=True) - g.amin(dim, keepdim=True)) / 3
        err = (q.reshape(g.shape) - g).abs()
        assert (err <= step / 2 + 1e-6).all()
        assert len(torch.unique(q.reshape(g.shape)[0, 0, 0])) <= (4 if axis == "channel" else 32)
    assert _common.quant_bytes(1024, 2, 32) == 1024 * 2 / 8 + 32 * 2 * 2


def test_kivi_streams_keys_in_blocks_and_values_one_at_a_time(tiny_lm, ids):
    R = G = 16
    m = method("kivi", residual_length=R, group_size=G)
    run = _run(tiny_lm, m, ids[:90], 0.5, decode=ids[:20])
    lc = run.layers[0]
    n = 90 + 20
    # keys: prefill quantizes 90 - 90 % 16 = 80; decoding flushes a block whenever 16 are full
    assert lc.state["nk"] == 80 + 16 * ((n - 80) // 16) == 96
    assert lc.state["nv"] == n - R
    h, d = lc.k.shape[1], lc.k.shape[-1]
    expect = (
        _common.quant_bytes(96 * h * d, 2, G)
        + _common.quant_bytes((n - R) * h * d, 2, math.gcd(G, d))
        + (2 * n - 96 - (n - R)) * h * d * 2
    )
    assert m.layer_bytes(lc, run) == expect


def test_intactkv_keeps_the_pivot_prefix_lossless(tiny_lm, ids, eager):
    kivi = method("kivi", residual_length=16, group_size=16)
    plain = _run(tiny_lm, kivi, ids, 0.5)
    tiny_lm.telemetry["kv.protected_tokens"] = 0
    intact = _run(tiny_lm, kivi, ids, 0.5, modifier=method("intactkv", pivot_tokens=3))  # kivi+intactkv
    assert tiny_lm.telemetry["kv.protected_tokens"] == 3
    alone = _run(tiny_lm, method("intactkv", pivot_tokens=3, quantizer="kivi"), ids, 0.5)  # wraps kivi
    assert tiny_lm.telemetry["kv.protected_tokens"] == 6 and len(alone.layers) == len(intact.layers)
    k_ref, v_ref = eager[1][0]
    assert torch.allclose(intact.layers[0].k[:, :, :3], k_ref[:, :, :3], atol=1e-6)
    assert torch.allclose(intact.layers[0].v[:, :, :3], v_ref[:, :, :3], atol=1e-6)
    assert not torch.allclose(plain.layers[0].k[:, :, :3], k_ref[:, :, :3], atol=1e-3)


def test_gear_low_rank_outliers_and_bytes(tiny_lm, ids):
    torch.manual_seed(0)
    a = torch.randn(1, 2, 64, 3) @ torch.randn(1, 2, 3, 16)  # exactly rank 3
    assert torch.allclose(power_low_rank(a, 3, 3, torch.Generator().manual_seed(0)), a, atol=1e-3)
    x = torch.randn(1, 2, 5, 50)
    s = outliers(x, 0.02)  # 1 top + 1 bottom of 100 per token
    rows = x.permute(0, 2, 1, 3).reshape(5, 100)
    for t in range(5):
        kept = set(torch.nonzero(s.permute(0, 2, 1, 3).reshape(5, 100)[t]).flatten().tolist())
        assert kept == {int(rows[t].argmax()), int(rows[t].argmin())}
    m = method("gear", streaming_gap=16, group_size=16)
    run = _run(tiny_lm, m, ids[:90], 0.5)
    lc = run.layers[0]
    assert lc.state["done"] == 80 and m.layer_bytes(lc, run) < 2 * 90 * lc.k.shape[1] * lc.k.shape[-1] * 2


def test_svd_kv_is_the_eckart_young_truncation(tiny_lm, ids):
    w = tiny_lm.model.model.layers[0].self_attn.k_proj.weight.detach()
    s = torch.linalg.svdvals(w)
    for r in (1, 5, 12):
        err = torch.linalg.matrix_norm(w - low_rank_weight(w, r)) ** 2
        assert err == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-3)
    run = _run(tiny_lm, method("svd_kv"), ids, 0.25)
    assert run.bytes() / run.dense_bytes() == pytest.approx(0.25, abs=0.02)
    assert run.kept_tokens() == N


def test_kvpress_bridge_without_kvpress_says_how_to_install():
    pytest.importorskip("transformers")
    try:
        import kvpress  # noqa: F401

        pytest.skip("kvpress is installed: the cross-check below runs instead")
    except ImportError:
        pass
    from harness.errors import UserError

    with pytest.raises(UserError, match="pip install"):
        registry.method("kvpress:SnapKVPress")


@pytest.mark.parametrize("ours,press", [("snapkv", "SnapKVPress"), ("streaming_llm", "StreamingLLMPress")])
def test_matches_kvpress_press(tiny_lm, ids, ours, press):
    kvpress = pytest.importorskip("kvpress", reason="optional extra kvpress not installed")
    budget = 0.25
    run = _run(tiny_lm, method(ours), ids, budget)
    p = getattr(kvpress, press)(compression_ratio=1 - budget)
    if press == "StreamingLLMPress":
        p = kvpress.KeyRerotationPress(press=p)
    cache = DynamicCache()
    with torch.no_grad(), p(tiny_lm.model):
        tiny_lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    for layer, lc in zip(cache.layers, run.layers.values()):
        assert layer.keys.shape[2] == lc.n
        for h in range(lc.k.shape[1]):  # same kept set per head (kvpress's order is topk's)
            ours_k = lc.k[0, h][lc.k[0, h, :, 0].argsort()]
            theirs = layer.keys[0, h][layer.keys[0, h, :, 0].argsort()]
            assert torch.allclose(ours_k, theirs, atol=1e-4)


def test_kvpress_bridge_runs_the_task(tiny_model, tmp_path):
    pytest.importorskip("kvpress", reason="optional extra kvpress not installed")
    from harness import records, runner

    args = dict(registry.TASKS["kv_compression"].smoke_args, budgets="0.25,0.5")
    cells = runner.resolve(["kv_compression"], ["kvpress:SnapKVPress"], tiny_model, args, {}, limit=1)
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    m = records.read(out.path)["metrics"]
    assert abs(m["kept_fraction@0.25"]["value"] - 0.25) <= 0.02 and abs(m["kept_fraction@0.5"]["value"] - 0.5) <= 0.02


@pytest.mark.parametrize("rope", [None, "yarn"])
def test_rerotation_is_exact_under_the_models_current_rope(tiny_lm, rope):
    """rerotate(RoPE_p(k), δ) == RoPE_{p+δ}(k), also when a RoPE-scaling method patched the rotary."""
    rotary = _common._rotary_module(tiny_lm.model)
    ctx = method(rope, factor=4).apply(tiny_lm, MethodContext(target_length=2048)) if rope else None
    with ctx if ctx is not None else torch.no_grad():
        inv = _common.effective_inv_freq(rotary)
        k = torch.randn(1, 2, 5, rotary.inv_freq.shape[0] * 2)
        p, delta = torch.tensor([[3, 50, 7, 100, 9]]), torch.tensor([[-3, -40, 0, 11, -2]])
        cos, sin = rotary(k, p)
        rot, _ = apply_rotary_pos_emb(k, k, cos, sin)
        cos2, sin2 = rotary(k, p + delta)
        expect, _ = apply_rotary_pos_emb(k, k, cos2, sin2)
        assert torch.allclose(_common.rerotate(rot, delta.expand(1, 2, 5), inv), expect, atol=1e-4)
        if rope:
            assert not torch.allclose(inv, rotary.inv_freq.float())


@pytest.mark.parametrize("merge_budget", [3, 7])
def test_cam_decoding_over_all_layers_matches_a_slow_stream(merge_budget):
    """CaM while decoding, every layer at once with the recent window as a ring, against a slow
    loop over tokens in position order: each step the window's oldest token leaves, and with
    M ~ Bernoulli(A[e] / mean A of the window after it) M·v_e/merge_budget goes to the next
    merge_budget tokens (with 7 > the window's 4 others, the newest token too). A fed chunk of 3
    goes through the general case in the middle."""
    from harness.methods.kv._common import LayerCache, SlotStore

    gen = torch.Generator().manual_seed(1)
    L, H, d, m = 2, 2, 3, 10
    cam = CaM(merge_budget=merge_budget)
    start = cam.split(m)[0]
    store = SlotStore(torch.zeros(1, H, 0, d), L)
    everything = LayerCache(None, store, slice(None))
    ref = [[[] for _ in range(H)] for _ in range(L)]  # [position, value, score] in position order

    class R:
        target, generator = m, torch.Generator().manual_seed(5)

    draws = torch.Generator().manual_seed(5)
    probs = []  # the p of every draw, in order
    cam.draw = lambda ev, mean, run: probs.append(merge_probability(ev, mean)) or CaM.draw(ev, mean, run)
    nxt = 0
    for step in range(16):
        c = m if step == 0 else 3 if step == 8 else 1
        v = torch.randn(L, H, c, d, generator=gen)
        p = torch.arange(nxt, nxt + c).expand(L, H, c)
        everything.append(p[..., None].float().expand(L, H, c, d), v, p)
        bump = torch.rand(L, H, everything.n, generator=gen)
        everything.add_score(bump)
        for i in range(L):
            for h in range(H):
                ref[i][h] += [[nxt + j, v[i, h, j].clone(), 0.0] for j in range(c)]
                by_pos = {t[0]: t for t in ref[i][h]}
                for j, q in enumerate(everything.pos[i, h].tolist()):
                    by_pos[q][2] += float(bump[i, h, j])
        nxt += c
        if step:
            cam.compress_decode(everything, R)
            while len(ref[0][0]) > m:  # the slow stream: one token at a time
                e = [[ref[i][h][start] for h in range(H)] for i in range(L)]
                p_ref = torch.tensor(
                    [
                        [
                            [
                                min(
                                    1.0,
                                    e[i][h][2]
                                    / (sum(t[2] for t in ref[i][h][start + 1 :]) / len(ref[i][h][start + 1 :])),
                                )
                            ]
                            for h in range(H)
                        ]
                        for i in range(L)
                    ]
                )
                assert torch.allclose(probs.pop(0), p_ref, atol=1e-5)
                draw = torch.bernoulli(p_ref, generator=draws)
                for i in range(L):
                    for h in range(H):
                        for t in ref[i][h][start + 1 : start + 1 + merge_budget]:
                            t[1] = t[1] + float(draw[i, h, 0]) * e[i][h][1] / merge_budget
                        del ref[i][h][start]
        for i in range(L):
            for h in range(H):
                got = {
                    q: (everything.v[i, h, j], everything.k[i, h, j, 0])
                    for j, q in enumerate(everything.pos[i, h].tolist())
                }
                assert sorted(got) == [t[0] for t in ref[i][h]], (step, i, h)
                for q, value, _ in ref[i][h]:
                    assert torch.allclose(got[q][0], value, atol=1e-5) and float(got[q][1]) == q, (step, q)
    assert everything.state["ring"] != 0
