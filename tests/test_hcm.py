"""HOMER (hcm) against an independent slow computation of the same rule: token-by-token float64
attention with explicit RoPE, pruning by sorting, the merge tree by plain recursion; plus the
plain model for prompts within one chunk, and the harness hooks (generation and scoring)."""

import math

import pytest
import torch

from harness.interfaces import MethodContext
from harness.methods.rope.hcm import HCM, homer_prefill
from harness.zoo.tokenizer import build_tokenizer
from harness.zoo.train import Recipe, build_model
from tests.test_position_remapping import rot1


@pytest.fixture(scope="module")
def model4():
    torch.manual_seed(3)
    tok = build_tokenizer(1)  # pinned: random-init fixtures, their token ids must not move with the zoo generation
    recipe = Recipe(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        context_length=128,
    )
    return build_model(recipe, len(tok), tok.pad_token_id).eval()


def slow_homer(model, ids, M, T, W, P, S, bias):
    cfg = model.config
    layers = model.model.layers
    H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    D = lambda t: t.detach().double()
    eps = cfg.rms_norm_eps

    def norm(x, w):
        return x / torch.sqrt((x * x).mean() + eps) * D(w)

    def attention(li, tokens):
        """tokens: list of dicts with h, pos; returns new h per token, keys, values, significance."""
        at = layers[li].self_attn
        xs = [norm(t["h"], layers[li].input_layernorm.weight) for t in tokens]
        q = [(D(at.q_proj.weight) @ x).view(H, hd) for x in xs]
        k = [(D(at.k_proj.weight) @ x).view(KV, hd) for x in xs]
        v = [(D(at.v_proj.weight) @ x).view(KV, hd) for x in xs]
        q = [torch.stack([rot1(qi[h], t["pos"]) for h in range(H)]) for qi, t in zip(q, tokens)]
        k = [torch.stack([rot1(ki[h], t["pos"]) for h in range(KV)]) for ki, t in zip(k, tokens)]
        new = []
        for i, t in enumerate(tokens):
            heads = []
            for h in range(H):
                g = h // (H // KV)
                p = torch.softmax(torch.stack([q[i][h] @ k[j][g] for j in range(i + 1)]) / math.sqrt(hd), 0)
                heads.append(sum(p[j] * v[j][g] for j in range(i + 1)))
            new.append(t["h"] + D(at.o_proj.weight) @ torch.cat(heads))
        last = len(tokens) - 1
        sig = [
            max(float(q[last][h] @ k[j][h // (H // KV)]) / math.sqrt(hd) for h in range(H)) for j in range(len(tokens))
        ]
        return new, k, v, sig

    def mlp(li, h):
        m = layers[li].mlp
        x = norm(h, layers[li].post_attention_layernorm.weight)
        gate = D(m.gate_proj.weight) @ x
        return h + D(m.down_proj.weight) @ (gate * torch.sigmoid(gate) * (D(m.up_proj.weight) @ x))

    def process(tokens, which, target):
        for n, li in enumerate(which):
            new, k, v, sig = attention(li, tokens)
            for t, h, kk, vv in zip(tokens, new, k, v):
                t["h"] = h
                t["kv"] = t["kv"] + [(kk, vv)]
            drop = len(tokens) - target
            if drop > 0 and n == len(which) - 1:
                last = tokens[-1]["pos"]
                score = [s - (float(bias[li][last - t["pos"]]) if bias is not None else 0) for s, t in zip(sig, tokens)]
                order = sorted((i for i, t in enumerate(tokens) if t["ctx"]), key=lambda i: score[i])
                gone = set(order[:drop])
                tokens = [t for i, t in enumerate(tokens) if i not in gone]
            for t in tokens:
                t["h"] = mlp(li, t["h"])
        return tokens

    def average(a, b):
        return {
            "h": (a["h"] + b["h"]) / 2,
            "pos": a["pos"],
            "ctx": False,
            "kv": [((ka + kb) / 2, (va + vb) / 2) for (ka, va), (kb, vb) in zip(a["kv"], b["kv"])],
        }

    n_layers = len(layers)
    context = ids[P : len(ids) - S]
    count = 1
    while count * (M - P - S) < len(context):
        count *= 2
    height = int(math.log2(count))
    e = -(-len(context) // count)
    per = (n_layers - W) // (height + 1)
    lo = (n_layers - W) - per * (height + 1)
    default = P + (M - P - S) // 2 + S

    def leaf_tokens(i):
        ctx = context[i * e : (i + 1) * e]
        spos = [P + e + j for j in range(S)] if count > 1 else [P + len(ctx) + j for j in range(S)]
        toks = ids[:P] + ctx + ids[len(ids) - S :]
        poss = list(range(P + len(ctx))) + spos
        return [{"id": t, "pos": p, "ctx": P <= j < P + len(ctx), "kv": []} for j, (t, p) in enumerate(zip(toks, poss))]

    def build(first, n, ht, target):
        if n == 1:
            toks = leaf_tokens(first)
            for t in toks:
                t["h"] = D(model.model.embed_tokens.weight[t["id"]])
            return process(toks, list(range(per + lo + W)), target)
        rlen = len(leaf_tokens(first + n // 2))
        lt, rt = (M - (rlen - P - S), rlen) if rlen < default else (default, default)
        left, right = build(first, n // 2, ht - 1, lt), build(first + n // 2, n // 2, ht - 1, rt)
        merged = (
            [average(a, b) for a, b in zip(left[:P], right[:P])]
            + left[P : len(left) - S]
            + right[P : len(right) - S]
            + [average(a, b) for a, b in zip(left[len(left) - S :], right[len(right) - S :])]
        )
        return process(merged, [lo + W + per * ht + j for j in range(per)], target)

    root = build(0, count, height, min(T, len(ids)))
    logits = D(model.lm_head.weight) @ norm(root[-1]["h"], model.model.norm.weight)
    return root, logits


@pytest.mark.fidelity(
    "hcm",
    reference="slow float64 token-by-token HOMER: explicit attention and RoPE, pruning by sorting, the merge tree by recursion",
    tolerance="rel 1e-4, abs 1e-5 (keys, values); 1e-4 (logits)",
)
@pytest.mark.parametrize("n_tokens,W,calibrated", [(110, 0, False), (140, 0, True), (110, 1, True)])
def test_prefill_equals_slow_rule(model4, n_tokens, W, calibrated):
    M, T, P, S = 40, 40, 4, 3
    ids = torch.randint(30, 2000, (n_tokens,), generator=torch.Generator().manual_seed(n_tokens)).tolist()
    bias = torch.randn(4, M, generator=torch.Generator().manual_seed(1)) if calibrated else None
    kv, pos, logits, per = homer_prefill(model4, ids, M, T, W, P, S, bias)
    assert per == 1
    root, slow_logits = slow_homer(model4, ids, M, T, W, P, S, bias)
    assert pos.tolist() == [t["pos"] for t in root]
    assert len(pos) < n_tokens
    for li, (k, v) in enumerate(kv):
        want_k = torch.stack([t["kv"][li][0] for t in root], dim=1)[None]  # [1, kv_heads, n, d]
        want_v = torch.stack([t["kv"][li][1] for t in root], dim=1)[None]
        torch.testing.assert_close(k.double(), want_k, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v.double(), want_v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits.double(), slow_logits, rtol=1e-4, atol=1e-4)


def test_short_prompts_are_the_plain_model_and_long_ones_are_reduced(tiny_lm):
    short = [tiny_lm.encode(" The cost saim tulskited over the wal.") * 2]
    long = [tiny_lm.encode(" The cost saim tulskited over the wal. Hina tulskited a dool.") * 20]
    plain = tiny_lm.generate(short, max_new_tokens=6)
    method = HCM(max_chunk_len=96, layers_warmup=0, calibration_windows=2)
    with method.apply(tiny_lm, MethodContext(target_length=300)):
        same = tiny_lm.generate(short, max_new_tokens=6)
        reduced = tiny_lm.generate(long, max_new_tokens=6)
        scored = tiny_lm.loglikelihood([(long[0][:200], long[0][200:230])])
    assert same == plain
    assert len(reduced[0]) == 6 and tiny_lm.telemetry["hcm.pruned_tokens"] > 0
    assert scored[0].n_tokens == 30 and math.isfinite(scored[0].logprob)
    assert method.check_effect(tiny_lm, MethodContext(target_length=300), None) is None


def test_calibration_bias_is_the_mean_significance_by_distance(tiny_lm):
    bias = HCM(calibration_windows=2).calibrate(tiny_lm, 32)
    assert bias.shape == (2, 32) and torch.isfinite(bias).all()
    assert HCM(calibration_windows=0).calibrate(tiny_lm, 32) is None
