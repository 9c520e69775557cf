"""Position-remapping methods (SelfExtend, DCA) against a slow loop over query-key pairs that
applies each paper's rule, against the unmodified model where the rule is the identity, and under
the KV cache (generation with the cache equals full recomputation at every step)."""
import math

import pytest
import torch

from harness.interfaces import MethodContext
from harness.methods.rope._attention import AttentionInputs
from harness.methods.rope.dca import DCA
from harness.methods.rope.longheads import LongHeads
from harness.methods.rope.selfextend import SelfExtend


def rope_at(pos, dim, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = pos * inv
    return torch.cat([ang, ang]).cos(), torch.cat([ang, ang]).sin()


def rot1(x, pos):
    cos, sin = rope_at(pos, x.shape[-1])
    x1, x2 = x[: x.shape[-1] // 2], x[x.shape[-1] // 2:]
    return x * cos + torch.cat([-x2, x1]) * sin


def slow_attention(q, k, v, rule, scaling):
    """One head, positions 0..L-1; rule(i, j) -> (query position, key position) for that pair."""
    L = q.shape[0]
    out = torch.zeros_like(v)
    for i in range(L):
        logits = []
        for j in range(i + 1):
            qp, kp = rule(i, j)
            logits.append(rot1(q[i], qp) @ rot1(k[j], kp))
        p = torch.softmax(torch.stack(logits) * scaling, 0)
        out[i] = p @ v[: i + 1]
    return out


def selfextend_rule(G, W):
    return lambda i, j: (i, j) if i - j < W else (i // G + W - W // G, j // G)


def dca_rule(chunk_size, c):
    def rule(i, j):
        if i // c == j // c:
            return i % c, j % c                          # intra-chunk
        if i // c == j // c + 1:
            return min(i % c + c, chunk_size), j % c     # successive chunk
        return chunk_size, j % c                         # inter-chunk
    return rule


@pytest.mark.parametrize("attend,rule", [
    (lambda a: SelfExtend.attend(a, 3, 8), selfextend_rule(3, 8)),
    (lambda a: SelfExtend.attend(a, 4, 5), selfextend_rule(4, 5)),
    (lambda a: DCA.attend(a, 9, 7), dca_rule(9, 7)),
    (lambda a: DCA.attend(a, 12, 12), dca_rule(12, 12)),
])
def test_attend_equals_slow_loop(attend, rule):
    torch.manual_seed(0)
    L, d = 37, 16
    q, k, v = (torch.randn(L, d, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(L)[None]

    def rope(p):
        cs = [rope_at(float(x), d) for x in p[0]]
        return torch.stack([c for c, _ in cs])[None], torch.stack([s for _, s in cs])[None]
    inputs = AttentionInputs(q[None, None], k[None, None], v[None, None], pos, pos,
                             torch.ones(L, L, dtype=torch.bool).tril()[None, None], 1 / math.sqrt(d), rope)
    got = attend(inputs)[0, 0]
    expected = slow_attention(q, k, v, rule, 1 / math.sqrt(d))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)   # softmax runs in float32


def test_dca_within_one_chunk_is_the_plain_model(tiny_lm):
    ids = torch.randint(30, 2000, (2, 40))
    with torch.no_grad():
        plain = tiny_lm.model(input_ids=ids).logits
        with DCA(chunk_size=64, local_window=8).apply(tiny_lm, MethodContext()):   # c = 56 > 40
            same = tiny_lm.model(input_ids=ids).logits
    torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-4)


def test_group_size_one_is_the_plain_model(tiny_lm):
    ids = torch.randint(30, 2000, (2, 50))
    with torch.no_grad():
        plain = tiny_lm.model(input_ids=ids).logits
        with SelfExtend(group_size=1, window_size=4).apply(tiny_lm, MethodContext()):
            same = tiny_lm.model(input_ids=ids).logits
        with SelfExtend(group_size=4, window_size=8).apply(tiny_lm, MethodContext()):
            other = tiny_lm.model(input_ids=ids).logits
        restored = tiny_lm.model(input_ids=ids).logits
    torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(other, plain, atol=1e-3)
    torch.testing.assert_close(restored, plain)


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("method", [SelfExtend(group_size=3, window_size=10), DCA(chunk_size=24, local_window=4),
                                    LongHeads(chunk_size=4, atten_length=20)])   # 5 chunks of 4; prompts ~50
def test_generation_with_cache_equals_full_recomputation(tiny_lm, padding, method):
    prompts = [tiny_lm.encode(" The cost saim tulskited over the wal. Hina tulskited a dool.") * 3]
    if padding:
        prompts.append(prompts[0][5:])
    with method.apply(tiny_lm, MethodContext()):
        cached = tiny_lm.generate(prompts, max_new_tokens=8)
        for prompt, got in zip(prompts, cached):
            seq = list(prompt)
            with torch.no_grad():
                for _ in range(8):
                    logits = tiny_lm.model(input_ids=torch.tensor([seq]), use_cache=False).logits
                    seq.append(int(logits[0, -1].argmax()))
            assert got == seq[len(prompt):]


def test_dca_defaults(tiny_lm):
    assert DCA().resolved(tiny_lm, MethodContext()) == {"chunk_size": 96, "local_window": 16, "chunk_len": 80}


def test_defaults_follow_the_coverage_rule(tiny_lm):
    G, W = SelfExtend().sizes(tiny_lm, MethodContext(target_length=1024))
    L = 128
    assert W == L // 4 and W + (1024 - W) / G <= L / 2 and W + (1024 - W) / (G - 1) > L / 2
    assert SelfExtend().sizes(tiny_lm, MethodContext(target_length=100)) == (1, 32)
