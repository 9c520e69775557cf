"""The merging kv methods (CaM, KVMerger) against slow loops over tokens, at prefill and while
decoding (every layer at once)."""

import math

import pytest
import torch
import torch.nn.functional as F

from harness.methods.kv._cache import LayerCache, SlotStore
from harness.methods.kv.cam import CaM, merge_probability
from harness.methods.kv.kvmerger import gaussian_merge, nearest_kept


@pytest.mark.fidelity("cam", reference="slow loop over tokens of the prefill merge rule", tolerance="abs 1e-6")
def test_cam_prefill_merge_matches_a_slow_loop():
    torch.manual_seed(0)
    n, m, d = 40, 10, 3
    lc = LayerCache(torch.zeros(1, 2, 0, d))
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
    lc = LayerCache(torch.zeros(1, 2, 0, d))
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


@pytest.mark.fidelity(
    "kvmerger",
    reference="slow loop of the Gaussian-kernel weighted merge onto the nearest kept token",
    tolerance="abs 1e-5",
)
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


@pytest.mark.fidelity("cam", reference="slow token-by-token stream of the decoding merge rule", tolerance="abs 1e-5")
@pytest.mark.parametrize("merge_budget", [3, 7])
def test_cam_decoding_over_all_layers_matches_a_slow_stream(merge_budget):
    """CaM while decoding, every layer at once with the recent window as a ring, against a slow
    loop over tokens in position order: each step the window's oldest token leaves, and with
    M ~ Bernoulli(A[e] / mean A of the window after it) M·v_e/merge_budget goes to the next
    merge_budget tokens (with 7 > the window's 4 others, the newest token too). A fed chunk of 3
    goes through the general case in the middle."""
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


@pytest.mark.fidelity(
    "cam",
    reference="transcription of zyxxmu/cam local_cam_mask (current); kvpress CAMPress's accumulated attention (cumulative)",
    tolerance="abs 1e-5",
)
@pytest.mark.parametrize("merge_attention", ["current", "cumulative"])
def test_cam_merge_probability_reads_the_chosen_attention(merge_attention):
    """Two query chunks are observed (4 queries, then 1: the decoding step), then one token leaves.
    Reference, written out from zyxxmu/cam `local_cam_mask` (per head, attn_score = the current
    step's probabilities): merge_prob = attn_score[e] / mean(attn_score[e+1 : window end]), clamped;
    "cumulative" reads the sum over every observed query instead (kvpress CAMPress)."""
    gen = torch.Generator().manual_seed(2)
    hkv, g, m, d = 2, 2, 10, 3
    n = m + 1
    lc = LayerCache(torch.zeros(1, hkv, 0, d))
    lc.append(
        torch.randn(1, hkv, n, d, generator=gen),
        torch.randn(1, hkv, n, d, generator=gen),
        torch.arange(n).expand(1, hkv, n),
    )
    cam = CaM(merge_budget=4, merge_attention=merge_attention)
    chunks = [torch.rand(1, hkv, g, c, n, generator=gen).softmax(-1) for c in (4, 1)]
    for probs in chunks:
        cam.observe(lc, probs, None, None)
    seen = []
    cam.draw = lambda ev, mean, run: seen.append(merge_probability(ev, mean)) or CaM.draw(ev, mean, run)

    class R:
        target, generator = m, torch.Generator().manual_seed(3)

    cam.compress_decode(lc, R)
    e = cam.split(m)[0]
    for h in range(hkv):
        if merge_attention == "current":
            attn_score = [sum(float(chunks[1][0, h, q, 0, j]) for q in range(g)) for j in range(n)]
        else:
            attn_score = [
                sum(float(c[0, h, q, i, j]) for c in chunks for q in range(g) for i in range(c.shape[3]))
                for j in range(n)
            ]
        mean_attn = sum(attn_score[e + 1 :]) / len(attn_score[e + 1 :])
        merge_prob = min(1.0, max(0.0, attn_score[e] / mean_attn))
        assert abs(float(seen[0][0, h, 0]) - merge_prob) < 1e-5, (h, merge_attention)
