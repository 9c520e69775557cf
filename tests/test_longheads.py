"""LongHeads against a slow per-head, per-query loop applying the paper's rule (chunk
representations, top-k chunk choice with the first / previous / current chunk kept, positions
re-laid inside the window), step by step under the KV cache, and on the tiny model. Generation
with the KV cache against full recomputation: tests/test_position_remapping.py."""

import math

import pytest
import torch

from harness.interfaces import MethodContext
from harness.attention import AttentionInputs
from harness.methods.rope.longheads import LongHeads
from tests.test_position_remapping import rope_at, rot1


def slow_longheads(q, k, v, w, n_chunks, scaling):
    """q, k, v: [h, N, d] float64, positions 0..N-1; a plain loop over heads and queries."""
    h, N, d = q.shape
    L = w * n_chunks
    out = torch.zeros_like(v)
    for head in range(h):
        reps = {}
        for g in range(N // w):
            toks = range(g * w, g * w + w)
            ql = [rot1(q[head, m], m % w) for m in toks]
            kl = [rot1(k[head, m], m % w) for m in toks]
            outs = []
            for qm in ql:
                a = torch.softmax(torch.stack([qm @ kj for kj in kl]) / math.sqrt(d), 0)
                outs.append(sum(a[j] * v[head, g * w + j] for j in range(w)))
            summary = sum(outs) / w
            a = torch.softmax(torch.stack([summary @ kj for kj in kl]) / math.sqrt(d), 0)
            reps[g] = sum(a[j] * kl[j] for j in range(w))
        for i in range(N):
            if i < L:
                pairs = [(i, j, j) for j in range(i + 1)]
            else:
                cur = i // w
                others = sorted(range(1, cur - 1), key=lambda g: float(q[head, i] @ reps[g]), reverse=True)
                chosen = sorted({0, cur - 1, cur, *others[: n_chunks - 3]})
                pairs = [
                    ((n_chunks - 1) * w + i % w, c * w + o, slot * w + o)
                    for slot, c in enumerate(chosen)
                    for o in range(w)
                    if c * w + o <= i
                ]
                pairs = [(qp, j, kp) for qp, j, kp in pairs]
            qpos = i if i < L else (n_chunks - 1) * w + i % w
            logits = torch.stack([rot1(q[head, i], qpos) @ rot1(k[head, j], kp) for _, j, kp in pairs])
            p = torch.softmax(logits * scaling, 0)
            out[head, i] = sum(p[n] * v[head, j] for n, (_, j, _) in enumerate(pairs))
    return out


def inputs(q, k, v, q_pos, k_pos):
    d = q.shape[-1]

    def rope(p):
        cs = [rope_at(float(x), d) for x in p[0]]
        return tuple(torch.stack([x[j] for x in cs])[None].to(q.dtype) for j in (0, 1))  # as the model's rope

    allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
    return AttentionInputs(q[None], k[None], v[None], q_pos[None], k_pos[None], allowed, 1 / math.sqrt(d), rope)


@pytest.mark.fidelity(
    "longheads",
    reference="slow per-head, per-query loop of the paper's chunk choice and in-window positions",
    tolerance="rel 1e-5, abs 1e-6",
)
@pytest.mark.parametrize("w,n_chunks", [(4, 4), (3, 5)])
@pytest.mark.parametrize("groups", [1, 3])  # query heads per KV head (grouped-query models)
def test_attend_equals_slow_loop_and_decoding_steps(w, n_chunks, groups):
    torch.manual_seed(0)
    h, N, d = 2, 47, 8
    q = torch.randn(h * groups, N, d, dtype=torch.float64)
    k, v = (torch.randn(h, N, d, dtype=torch.float64) for _ in range(2))
    # the slow loop reads each query head's own KV head
    expected = slow_longheads(
        q, k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0), w, n_chunks, 1 / math.sqrt(d)
    )
    method = LongHeads()
    pos = torch.arange(N)
    full = method.attend(inputs(q, k, v, pos, pos), w, n_chunks)[0]
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-6)  # softmax runs in float32
    start = 20  # prefill, then one token a step
    got = [method.attend(inputs(q[:, :start], k[:, :start], v[:, :start], pos[:start], pos[:start]), w, n_chunks)[0]]
    for i in range(start, N):
        got.append(
            method.attend(
                inputs(q[:, i : i + 1], k[:, : i + 1], v[:, : i + 1], pos[i : i + 1], pos[: i + 1]), w, n_chunks
            )[0]
        )
    torch.testing.assert_close(torch.cat(got, dim=1), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: the fused kernel's path
def test_small_tiles_and_blocks_equal_the_slow_loop(monkeypatch, dtype):
    """Tiles of 3 (query, slot) pairs, so a chunk that many queries pick spans several tiles, two
    tiles per fused call, and blocks of 5 far queries, so a block's own-chunk part spans two chunks:
    the same numbers as the slow loop."""
    from harness.methods.rope import longheads

    monkeypatch.setattr(longheads, "TILE_MIN", 3)
    monkeypatch.setattr(longheads, "TILE_MAX", 3)
    # a budget of 0.375 x 41 queries x 2 heads x 8 = 246 elements: blocks of 246 // (2 heads x
    # 3 slots x 8) = 5 queries, and 246 // 8 = 30 rows per call: two tiles (3 padded rows, 4 keys
    # and 4 values each)
    monkeypatch.setattr(longheads, "FAR_BUDGET", 0.375)
    monkeypatch.setattr(longheads, "CACHE_SHARE", 10**9)
    torch.manual_seed(1)
    h, N, d = 2, 41, 8
    q, k, v = (torch.randn(h, N, d, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(N)
    got = LongHeads().attend(inputs(*(x.to(dtype) for x in (q, k, v)), pos, pos), 4, 4)[0]
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(got.double(), slow_longheads(q, k, v, 4, 4, 1 / math.sqrt(d)), **tol)


def test_within_the_window_is_the_plain_model(tiny_lm):
    ids = torch.randint(30, 2000, (2, 60))
    with torch.no_grad():
        plain = tiny_lm.model(input_ids=ids).logits
        with LongHeads(chunk_size=8).apply(tiny_lm, MethodContext()):  # window 128 > 60
            same = tiny_lm.model(input_ids=ids).logits
        with LongHeads(chunk_size=4, atten_length=16).apply(tiny_lm, MethodContext()):
            other = tiny_lm.model(input_ids=ids).logits
    torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(other[:, :16], plain[:, :16], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(other[:, 20:], plain[:, 20:], atol=1e-3)


def test_defaults_follow_the_official_ratio(tiny_lm):
    assert LongHeads().resolved(tiny_lm, MethodContext()) == {
        "chunk_size": 8,
        "chunks_per_head": 16,
        "atten_length": 128,
    }


def test_positions_that_do_not_increase_are_refused():
    """Chunks, the window split and the own-chunk calls are read from the positions on the host,
    which must increase along the row (the harness and generate() never give anything else)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 12, 8, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(12)
    pos[5], pos[6] = pos[6], pos[5]
    with pytest.raises(ValueError, match="must increase"):
        LongHeads(chunk_size=2, atten_length=6).attend(inputs(q, k, v, pos, pos), 2, 3)
