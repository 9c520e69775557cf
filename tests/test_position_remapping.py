"""Position-remapping methods (SelfExtend, DCA) against a slow loop over query-key pairs that
applies each paper's rule, against the unmodified model where the rule is the identity, and under
the KV cache (generation with the cache equals full recomputation at every step)."""

import math

import pytest
import torch

from harness.interfaces import MethodContext
from harness import attention
from harness.attention import AttentionInputs
from harness.methods.rope.dca import DCA
from harness.methods.rope.longheads import LongHeads
from harness.methods.rope.selfextend import SelfExtend


def rope_at(pos, dim, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = pos * inv
    return torch.cat([ang, ang]).cos(), torch.cat([ang, ang]).sin()


def rot1(x, pos):
    cos, sin = rope_at(pos, x.shape[-1])
    x1, x2 = x[: x.shape[-1] // 2], x[x.shape[-1] // 2 :]
    return x * cos + torch.cat([-x2, x1]) * sin


def random_inputs(L: int = 37, d: int = 16, dtype=torch.float64):
    """(q, k, v) in float64 for the slow loop, and AttentionInputs over positions 0..L-1 in dtype."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(L, d, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(L)[None]

    def rope(p):
        cs = [rope_at(float(x), d) for x in p[0]]
        return torch.stack([c for c, _ in cs])[None].to(dtype), torch.stack([s for _, s in cs])[None].to(dtype)

    inputs = AttentionInputs(
        *(t[None, None].to(dtype) for t in (q, k, v)),
        pos,
        pos,
        torch.ones(L, L, dtype=torch.bool).tril()[None, None],
        1 / math.sqrt(d),
        rope,
    )
    return (q, k, v), inputs


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
            return i % c, j % c  # intra-chunk
        if i // c == j // c + 1:
            return min(i % c + c, chunk_size), j % c  # successive chunk
        return chunk_size, j % c  # inter-chunk

    return rule


@pytest.mark.fidelity(
    "selfextend",
    "dca",
    reference="slow float64 loop over query–key pairs applying each paper's position rule with explicit RoPE",
    tolerance="rel 1e-5, abs 1e-6",
)
@pytest.mark.parametrize(
    "attend,rule",
    [
        (lambda a: SelfExtend.attend(a, 3, 8), selfextend_rule(3, 8)),
        (lambda a: SelfExtend.attend(a, 4, 5), selfextend_rule(4, 5)),
        (lambda a: DCA.attend(a, 9, 7), dca_rule(9, 7)),
        (lambda a: DCA.attend(a, 12, 12), dca_rule(12, 12)),
    ],
)
@pytest.mark.parametrize("chunk", [1024, 5, 16])
def test_attend_equals_slow_loop(attend, rule, chunk, monkeypatch):
    """Small query blocks exercise the far-prefix split (keys every query of a block treats alike)."""
    from harness import attention

    monkeypatch.setattr(attention, "QUERY_CHUNK", chunk)
    (q, k, v), inputs = random_inputs()
    L, d, pos, rope = 37, 16, inputs.q_pos, inputs.rope
    got = attend(inputs)[0, 0]
    expected = slow_attention(q, k, v, rule, 1 / math.sqrt(d))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # softmax runs in float32
    # the last 10 queries against all 37 keys (a multi-token step after a cached prefix)
    tail = AttentionInputs(
        q[None, None, 27:],
        k[None, None],
        v[None, None],
        pos[:, 27:],
        pos,
        torch.ones(L, L, dtype=torch.bool).tril()[None, None, 27:],
        1 / math.sqrt(d),
        rope,
    )
    torch.testing.assert_close(attend(tail)[0, 0], expected[27:], rtol=1e-5, atol=1e-6)


def test_dca_within_one_chunk_is_the_plain_model(tiny_lm):
    ids = torch.randint(30, 2000, (2, 40))
    with torch.no_grad():
        plain = tiny_lm.model(input_ids=ids).logits
        with DCA(chunk_size=64, local_window=8).apply(tiny_lm, MethodContext()):  # c = 56 > 40
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
@pytest.mark.parametrize(
    "method",
    [
        SelfExtend(group_size=3, window_size=10),
        DCA(chunk_size=24, local_window=4),
        LongHeads(chunk_size=4, atten_length=20),
    ],
)  # 5 chunks of 4; prompts ~50
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
            assert got == seq[len(prompt) :]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", [SelfExtend(group_size=3, window_size=10), DCA(chunk_size=24, local_window=4)])
def test_padded_batch_masks_far_keys_by_one_row(tiny_lm, method, side, monkeypatch):
    """In a padded batch (left as generate pads, right as loglikelihood does), the keys within a
    query block's causal limit take the key-padding row [b, 1, 1, keys], not the block's queries x
    keys mask; every real token's logits equal those of its row run alone."""
    from harness import attention

    monkeypatch.setattr(attention, "QUERY_CHUNK", 8)
    shapes = []
    real = attention.attend_lse
    monkeypatch.setattr(
        attention, "attend_lse", lambda q, k, v, s, m: shapes.append((q.shape[2], m)) or real(q, k, v, s, m)
    )
    long = tiny_lm.encode(" The cost saim tulskited over the wal. Hina tulskited a dool.") * 3
    rows = [long, long[7:]]
    pad = tiny_lm.tokenizer.pad_token_id
    fill = [[pad] * (len(long) - len(r)) for r in rows]
    ids = torch.tensor([f + r if side == "left" else r + f for r, f in zip(rows, fill)])
    mask = torch.tensor(
        [[0] * len(f) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * len(f) for r, f in zip(rows, fill)]
    )
    with torch.no_grad(), method.apply(tiny_lm, MethodContext()):
        batch = tiny_lm.forward_logits(ids, mask)
        alone = [tiny_lm.forward_logits(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0] for r in rows]
    assert any(n > 1 and m is not None and m.shape[2] == 1 for n, m in shapes)
    for b, expected in enumerate(alone):
        torch.testing.assert_close(batch[b][mask[b].bool()], expected, rtol=1e-4, atol=1e-4)


def test_dca_defaults(tiny_lm):
    assert DCA().resolved(tiny_lm, MethodContext()) == {"chunk_size": 96, "local_window": 16, "chunk_len": 80}


def test_defaults_follow_the_coverage_rule(tiny_lm):
    G, W = SelfExtend().sizes(tiny_lm, MethodContext(target_length=1024))
    L = 128
    assert W == L // 4 and W + (1024 - W) / G <= L / 2 and W + (1024 - W) / (G - 1) > L / 2
    assert SelfExtend().sizes(tiny_lm, MethodContext(target_length=100)) == (1, 32)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_fused_attention_lse_matches_explicit(device):
    """The fused kernels' output and log-sum-exp equal the explicit softmax, padding included
    (a query whose keys are all masked gets zeros and -inf)."""
    from harness.attention import attend_lse

    torch.manual_seed(1)
    q, k, v = (
        torch.randn(2, 4, 40, 16, device=device),
        torch.randn(2, 4, 70, 16, device=device),
        torch.randn(2, 4, 70, 16, device=device),
    )
    allowed = torch.ones(2, 1, 40, 70, dtype=torch.bool, device=device)
    allowed[1, :, :, :9] = False  # left padding in the second row
    allowed[1, :, 3] = False  # a query that may see nothing
    with torch.no_grad():
        out, lse = attend_lse(q, k, v, 0.25, allowed)
    logits = (q @ k.transpose(2, 3) * 0.25).masked_fill(~allowed, float("-inf"))
    expected = torch.nan_to_num(torch.softmax(logits, -1)) @ v
    ok = allowed.any(-1).expand(2, 4, 40)
    torch.testing.assert_close(out[ok], expected[ok], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lse[ok], torch.logsumexp(logits, -1)[ok], rtol=1e-4, atol=1e-5)
    assert (out[~ok] == 0).all() and (lse[~ok] == float("-inf")).all()


def test_merging_partials_equals_one_softmax():
    from harness.attention import attend_lse, merge_partials

    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)
    allowed = torch.ones(1, 1, 5, 12, dtype=torch.bool)
    allowed[..., 0, 4:] = False  # query 0 sees only the first part
    with torch.enable_grad():  # the explicit reference path
        whole, _ = attend_lse(q, k, v, 0.3, allowed)
        parts = [
            attend_lse(q, k[:, :, :4], v[:, :, :4], 0.3, allowed[..., :4]),
            attend_lse(q, k[:, :, 4:], v[:, :, 4:], 0.3, allowed[..., 4:]),
        ]
    torch.testing.assert_close(merge_partials(parts), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [6, 1024])
@pytest.mark.parametrize("method", ["selfextend", "dca"])
def test_float32_blocks_use_the_fused_path_exactly(method, chunk, monkeypatch):
    """float32: the keys that every query of a block treats alike go through the fused kernel
    (with one 1024-query block, SelfExtend's neighbour run has queries that see none of its keys);
    the result still equals the float64 slow loop."""
    from harness import attention

    monkeypatch.setattr(attention, "QUERY_CHUNK", chunk)
    attend, rule = (
        (lambda a: SelfExtend.attend(a, 3, 8), selfextend_rule(3, 8))
        if method == "selfextend"
        else (lambda a: DCA.attend(a, 9, 7), dca_rule(9, 7))
    )
    (q, k, v), inputs = random_inputs(dtype=torch.float32)
    inputs.allowed = None  # causal alone (as without padding): blocks build their own mask,
    # and parts within the block's causal limit go unmasked
    d = 16
    calls = []
    real = attention._fused_lse
    monkeypatch.setattr(attention, "_fused_lse", lambda *x: calls.append(1) or real(*x))
    with torch.no_grad():
        got = attend(inputs)[0, 0]
    assert calls, "the uniform keys should have used the fused kernel"
    torch.testing.assert_close(got.double(), slow_attention(q, k, v, rule, 1 / math.sqrt(d)), rtol=1e-4, atol=1e-5)


def test_additive_mask_rows_are_aligned_for_the_cuda_kernel():
    """CUDA's memory-efficient kernel refuses a bias whose row stride is not a multiple of 8 (seen
    on an H100 with 511 keys): the mask's rows are padded and the view sliced; values unchanged."""
    from harness.attention import additive_mask

    allowed = torch.rand(1, 1, 5, 511) > 0.3
    bias = additive_mask(allowed, torch.bfloat16, align=8)
    assert bias.shape == allowed.shape and bias.stride(-2) % 8 == 0
    assert (bias[allowed] == 0).all() and (bias[~allowed] == float("-inf")).all()
    assert additive_mask(allowed, torch.float32).stride(-2) == 511  # no padding unless asked


def test_falling_back_from_the_fused_kernel_warns_once(monkeypatch):
    """The explicit path is slower and larger: a benchmark or a long run must not take it silently."""
    from harness import attention

    def refuse(*_):
        raise RuntimeError("kernel refused these shapes\nmore detail")

    monkeypatch.setattr(attention, "_fused_lse", refuse)
    monkeypatch.setattr(attention, "_FELL_BACK", [])
    q = k = v = torch.randn(1, 2, 4, 8)
    with pytest.warns(UserWarning, match="kernel refused these shapes") as seen:
        with torch.no_grad():
            out, _ = attention.attend_lse(q, k, v, 0.3, None)
            attention.attend_lse(q, k, v, 0.3, None)
    assert len(seen) == 1
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3))


@pytest.mark.parametrize(
    "attend,rule",
    [(lambda a: SelfExtend.attend(a, 3, 8), selfextend_rule(3, 8)), (lambda a: DCA.attend(a, 9, 7), dca_rule(9, 7))],
)
@pytest.mark.parametrize("chunk", [1024, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the fused kernel; the explicit path
def test_grouped_query_heads_equal_the_slow_loop_per_head(attend, rule, chunk, dtype, monkeypatch):
    """A grouped-query model's KV heads reach the rule unrepeated (3 query heads per KV head here):
    every query head equals the slow loop over its own KV head, for all queries and for the last
    10 after a cached prefix (their mask rows go with each query head)."""
    from harness import attention

    monkeypatch.setattr(attention, "QUERY_CHUNK", chunk)
    torch.manual_seed(1)
    L, d, groups, kv_heads = 37, 16, 3, 2
    q = torch.randn(kv_heads * groups, L, d, dtype=torch.float64)
    k, v = (torch.randn(kv_heads, L, d, dtype=torch.float64) for _ in range(2))
    _, single = random_inputs(L, d, dtype)
    causal = torch.ones(L, L, dtype=torch.bool).tril()[None, None]
    expected = torch.stack(
        [slow_attention(q[h], k[h // groups], v[h // groups], rule, 1 / math.sqrt(d)) for h in range(len(q))]
    )
    for s in (0, 27):
        inputs = AttentionInputs(
            q[None, :, s:].to(dtype),
            k[None].to(dtype),
            v[None].to(dtype),
            single.q_pos[:, s:],
            single.q_pos,
            causal[:, :, s:],
            1 / math.sqrt(d),
            single.rope,
        )
        torch.testing.assert_close(attend(inputs)[0].double(), expected[:, s:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_heads,mask_rows", [(1, 5), (2, 5), (6, 5), (2, 1), (None, None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the fused kernel; the explicit path
def test_attend_lse_with_grouped_keys_equals_a_softmax_per_query_head(mask_heads, mask_rows, dtype):
    """attend_lse with 3 query heads per KV head and a mask for every head, one per KV head, one per
    query head or one row for every query: output and log-sum-exp equal a literal softmax per query
    head over the keys it may see."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 6, 5, 8, generator=g, dtype=dtype)
    k, v = (torch.randn(1, 2, 7, 8, generator=g, dtype=dtype) for _ in range(2))
    allowed = None
    if mask_heads is not None:
        allowed = torch.rand(1, mask_heads, mask_rows, 7, generator=g) > 0.4
        allowed[..., 0] = True  # every query sees a key
    with torch.no_grad():
        out, lse = attention.attend_lse(q, k, v, 0.5, allowed)
    for h in range(6):
        for i in range(5):
            seen = torch.ones(7, dtype=torch.bool)
            if allowed is not None:
                seen = allowed[0, h * mask_heads // 6, i if mask_rows > 1 else 0]
            logits = (k[0, h // 3, seen] @ q[0, h, i]) * 0.5
            torch.testing.assert_close(
                out[0, h, i], torch.softmax(logits, 0) @ v[0, h // 3, seen], rtol=1e-5, atol=1e-5
            )
            torch.testing.assert_close(lse[0, h, i].to(dtype), torch.logsumexp(logits, 0), rtol=1e-5, atol=1e-5)


def test_positions_on_the_host_follow_the_cache(tiny_lm):
    """AttentionInputs.on_host() gives each call's query and key positions whichever calls before
    it asked (the others keep nothing), and never a previous sequence's: sequence B's second call
    has as many keys before it as sequence A kept."""
    from transformers import DynamicCache

    schedule = {  # per sequence: (its positions' offset, [(tokens, ask) per forward])
        "A": (0, [(8, True), (8, True)]),
        "B": (100, [(16, False), (4, True)]),
        "C": (7, [(8, True), (8, False), (4, True), (1, True), (1, True)]),
    }
    asked = []

    def attend(a):  # (reads the loop's current sequence `name` and forward's `ask`)
        if ask:
            q_host, k_host = a.on_host()
            assert q_host.device.type == k_host.device.type == "cpu"
            assert torch.equal(q_host, a.q_pos) and torch.equal(k_host, a.k_pos), (name, a.layer)
            asked.append(a.layer)
        return attention.chunk_attend(a.q, a.k, a.v, a.k.shape[2] - a.q.shape[2], a.scaling)

    with attention.attention_override(tiny_lm.model, attend), torch.no_grad():
        for name, (offset, forwards) in schedule.items():
            cache, start = DynamicCache(config=tiny_lm.model.config), 0
            for tokens, ask in forwards:
                positions = torch.arange(start, start + tokens)[None] + offset
                tiny_lm.model(
                    input_ids=torch.randint(5, 200, (1, tokens)), position_ids=positions, past_key_values=cache
                )
                start += tokens
    assert len(asked) == 7 * tiny_lm.model.config.num_hidden_layers
