"""The byte-budget kv methods: fake quantization (KIVI, IntactKV's lossless prefix, GEAR's low rank
and outliers) and SVD-KV's low-rank projection, against the formulas."""

import math

import pytest
import torch

from harness import registry
from harness.methods.kv._quant import quant_bytes, quantize_groups
from harness.methods.kv.gear import outliers, power_low_rank
from harness.methods.kv.svd_kv import low_rank_weight
from tests import kv_helpers
from tests.kv_helpers import N, method, run_with

registry.load()
ids, eager = kv_helpers.ids, kv_helpers.eager  # the module fixtures the kv test files share


def test_quantization_round_trip_and_error_bound():
    levels = torch.tensor([0.0, 1.0, 2.0, 3.0]) * 0.5 - 0.25  # exactly on a 2-bit grid
    x = levels[torch.randint(0, 4, (1, 2, 32, 8))]
    x[..., 0, :], x[..., 1, :] = -0.25, 1.25  # every group spans the grid
    assert torch.equal(quantize_groups(x, 2, 32, "token"), x)
    y = torch.randn(1, 2, 64, 8)
    for axis, dim in (("token", 3), ("channel", 4)):
        q = quantize_groups(y, 2, 8 if axis == "channel" else 32, axis)
        g = y.reshape(1, 2, 2, 32, 8) if axis == "token" else y.reshape(1, 2, 64, 1, 8)
        step = (g.amax(dim, keepdim=True) - g.amin(dim, keepdim=True)) / 3
        err = (q.reshape(g.shape) - g).abs()
        assert (err <= step / 2 + 1e-6).all()
        assert len(torch.unique(q.reshape(g.shape)[0, 0, 0])) <= (4 if axis == "channel" else 32)
    assert quant_bytes(1024, 2, 32) == 1024 * 2 / 8 + 32 * 2 * 2


def test_kivi_streams_keys_in_blocks_and_values_one_at_a_time(tiny_lm, ids):
    R = G = 16
    m = method("kivi", residual_length=R, group_size=G)
    run = run_with(tiny_lm, m, ids[:90], 0.5, decode=ids[:20])
    lc = run.layers[0]
    n = 90 + 20
    # keys: prefill quantizes 90 - 90 % 16 = 80; decoding flushes a block whenever 16 are full
    assert lc.state["nk"] == 80 + 16 * ((n - 80) // 16) == 96
    assert lc.state["nv"] == n - R
    h, d = lc.k.shape[1], lc.k.shape[-1]
    expect = (
        quant_bytes(96 * h * d, 2, G)
        + quant_bytes((n - R) * h * d, 2, math.gcd(G, d))
        + (2 * n - 96 - (n - R)) * h * d * 2
    )
    assert m.layer_bytes(lc, run) == expect


def test_intactkv_keeps_the_pivot_prefix_lossless(tiny_lm, ids, eager):
    kivi = method("kivi", residual_length=16, group_size=16)
    plain = run_with(tiny_lm, kivi, ids, 0.5)
    tiny_lm.telemetry["kv.protected_tokens"] = 0
    intact = run_with(tiny_lm, kivi, ids, 0.5, modifier=method("intactkv", pivot_tokens=3))  # kivi+intactkv
    assert tiny_lm.telemetry["kv.protected_tokens"] == 3
    alone = run_with(tiny_lm, method("intactkv", pivot_tokens=3, quantizer="kivi"), ids, 0.5)  # wraps kivi
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
    run = run_with(tiny_lm, m, ids[:90], 0.5)
    lc = run.layers[0]
    assert lc.state["done"] == 80 and m.layer_bytes(lc, run) < 2 * 90 * lc.k.shape[1] * lc.k.shape[-1] * 2


def test_svd_kv_is_the_eckart_young_truncation(tiny_lm, ids):
    w = tiny_lm.model.model.layers[0].self_attn.k_proj.weight.detach()
    s = torch.linalg.svdvals(w)
    for r in (1, 5, 12):
        err = torch.linalg.matrix_norm(w - low_rank_weight(w, r)) ** 2
        assert err == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-3)
    run = run_with(tiny_lm, method("svd_kv"), ids, 0.25)
    assert run.bytes() / run.dense_bytes() == pytest.approx(0.25, abs=0.02)
    assert run.kept_tokens() == N
