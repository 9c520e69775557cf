"""The byte-budget kv methods: fake quantization (KIVI, IntactKV's lossless prefix, GEAR's low rank
and outliers) and SVD-KV's low-rank projection, against the formulas."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness import registry
from harness.methods.kv._quant import quant_bytes, quantize_groups
from harness.methods.kv.gear import GEAR, power_low_rank
from harness.lm import KVRequest
from harness.interfaces import MethodContext
from tests import kv_helpers
from tests.kv_helpers import N, method, run_with

registry.load()
ids, eager, zoo_lm = kv_helpers.ids, kv_helpers.eager, kv_helpers.zoo_lm  # the module fixtures the kv test files share


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


@pytest.mark.fidelity(
    "kivi",
    reference="KIVI's streaming rule worked by hand (keys quantized in full groups of G tokens, the newest R values in full precision)",
    tolerance="exact token counts",
)
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


@pytest.mark.fidelity(
    "intactkv", reference="transformers' own keys and values of the pivot tokens", tolerance="abs 1e-6"
)
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
    m = method("gear", streaming_gap=16, group_size=16)
    run = run_with(tiny_lm, m, ids[:90], 0.5)
    lc = run.layers[0]
    assert lc.state["done"] == 80 and m.layer_bytes(lc, run) < 2 * 90 * lc.k.shape[1] * lc.k.shape[-1] * 2


@pytest.mark.fidelity(
    "gear",
    reference="literal loops of the paper's definition and the official simulation (gears_channelQ / gears_tokenQ)",
    tolerance="abs 1e-5",
)
@pytest.mark.parametrize("axis", ["channel", "token"])
def test_gear_decomposition_matches_a_literal_transcription(axis):
    """D + S against loops over the paper's definition and the official simulation
    (`gears_channelQ` for keys, `gears_tokenQ` for values): per selection vector (a channel over the
    tokens; a token over every head's channels) the top and bottom left/2 entries are the outliers,
    set to the vector's mean before the min-max quantization of their group and given back exactly
    after it. With rank r the low-rank part L has rank <= r per head and shrinks the error."""
    gen = torch.Generator().manual_seed(4)
    h, n, d, bits, group, left = 2, 32, 8, 2, 8, 0.125
    x = torch.randn(1, h, n, d, generator=gen)
    x[0, 1, 5, 3], x[0, 0, 7, 2] = 9.0, -9.0
    gear = GEAR(bits=bits, group_size=group, left=left, streaming_gap=32)
    got, count = gear.compress_block(x, axis, 0, None)
    hd = [(hh, c) for hh in range(h) for c in range(d)]  # a token's hidden vector, in order
    if axis == "channel":
        vectors = [[(hh, t, c) for t in range(n)] for hh, c in hd]
        groups = [[(hh, t, c) for t in range(g0, g0 + group)] for hh, c in hd for g0 in range(0, n, group)]
    else:
        vectors = [[(hh, t, c) for hh, c in hd] for t in range(n)]
        groups = [[(hh, t, c) for hh, c in hd[g0 : g0 + group]] for t in range(n) for g0 in range(0, h * d, group)]
    k = round(left / 2 * len(vectors[0]))
    filled, ref, outlier = x[0].clone(), x[0].clone(), set()
    for vec in vectors:
        by_value = sorted(vec, key=lambda i: float(x[0][i]))
        mean = sum(float(x[0][i]) for i in vec) / len(vec)
        for i in by_value[:k] + by_value[-k:]:
            filled[i] = mean
            outlier.add(i)
    for grp in groups:
        lo, hi = min(float(filled[i]) for i in grp), max(float(filled[i]) for i in grp)
        scale = (hi - lo) / (2**bits - 1)
        for i in grp:
            ref[i] = round((float(filled[i]) - lo) / scale) * scale + lo
    for i in outlier:
        ref[i] = x[0][i]
    assert count == len(outlier) == k * 2 * len(vectors)
    assert torch.allclose(got[0], ref, atol=1e-5)
    low, _ = gear.compress_block(x, axis, 2, torch.Generator().manual_seed(0))
    assert all(int(torch.linalg.matrix_rank(low[0, hh] - got[0, hh], atol=1e-4)) <= 2 for hh in range(h))
    assert float((x - low).norm()) < float((x - got).norm())


def held_out_text(lm, n=256):
    """Evaluation-side synthetic text (the zoo's own kind of text, never calibration text)."""
    from harness.synthetic import EVAL_SEED_BASE, Corpus

    ids, corpus = [], Corpus(EVAL_SEED_BASE + 11)
    while len(ids) < n:
        ids += lm.encode(" " + corpus.text(20))
    return ids[:n]


def calibrated_svd_kv(lm, folder, **args):
    m = method("svd_kv", **{"calib_sequences": 4, "calib_tokens": 128, **args})
    payload, write = m.fit(lm, MethodContext(), log=lambda msg: None)
    write(folder)
    m.use_artifact(payload, folder)
    return m


def kv_inputs(lm, rows) -> list[np.ndarray]:
    """Per layer, the attention input (after input_layernorm) of every token of rows, stacked
    [N, hidden], through transformers' own forward (hidden states), in float64."""
    layers = lm.model.model.layers
    with torch.no_grad():
        hs = lm.model(input_ids=torch.as_tensor(rows), output_hidden_states=True).hidden_states
        return [layers[i].input_layernorm(hs[i]).flatten(0, 1).double().numpy() for i in range(len(layers))]


def project(m, module, x, budget):
    run = SimpleNamespace(dense=False, budget=budget)
    with torch.no_grad():
        return [t[0].double().numpy() for t in m.project_kv(module, torch.as_tensor(x, dtype=torch.float32)[None], run)]


@pytest.mark.fidelity(
    "svd_kv",
    reference="numpy SVD of the stacked calibration keys/values (X·W from transformers' hidden states): "
    "projector onto the top-r right singular vectors, and X·W·P·Pᵀ on held-out tokens",
    tolerance="abs 1e-4 (projector), rel 1e-4 (projected keys/values)",
)
def test_svd_kv_calibrated_projection_is_the_svd_of_the_stacked_activations(tiny_lm, ids, tmp_path):
    m = calibrated_svd_kv(tiny_lm, tmp_path)
    calib = kv_inputs(tiny_lm, m.calibration_ids(tiny_lm))
    held = kv_inputs(tiny_lm, [ids])
    for layer, module in enumerate(tiny_lm.model.model.layers):
        attn = module.self_attn
        for kv, i in (("k", 0), ("v", 1)):
            w = getattr(attn, f"{kv}_proj").weight.detach().double().numpy()  # [out, in]
            acts = calib[layer] @ w.T  # the stacked calibration caches [N, H_kv·d]
            vt = np.linalg.svd(acts, full_matrices=False)[2]
            for budget in (0.1, 0.25, 0.5):
                r = round(budget * w.shape[0])
                want = vt[:r].T @ vt[:r]
                p = m.basis(attn, kv, r).double().numpy()
                assert np.abs(p @ p.T - want).max() < 1e-4, (layer, kv, r)
                got = project(m, attn, held[layer], budget)[i]
                ref = held[layer] @ w.T @ want
                assert np.linalg.norm(got - ref) <= 1e-4 * np.linalg.norm(ref), (layer, kv, r)
    run = run_with(tiny_lm, m, ids, 0.25)
    assert run.bytes() / run.dense_bytes() == pytest.approx(0.25, abs=0.02)
    assert run.kept_tokens() == N


def test_svd_kv_weights_variant_is_the_eckart_young_truncation_of_the_weights(tiny_lm, ids):
    m = method("svd_kv", calibration="weights")
    x = kv_inputs(tiny_lm, [ids])[0]
    attn = tiny_lm.model.model.layers[0].self_attn
    for kv, i in (("k", 0), ("v", 1)):
        w = getattr(attn, f"{kv}_proj").weight.detach().double().numpy()
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        for r in (1, 5, 12, w.shape[0]):
            w_r = (u[:, :r] * s[:r]) @ vt[:r]
            assert np.linalg.norm(w - w_r) ** 2 == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-6)
            got = project(m, attn, x, r / w.shape[0])[i]
            assert np.linalg.norm(got - x @ w_r.T) <= 1e-4 * np.linalg.norm(x @ w_r.T)
    run = run_with(tiny_lm, m, ids, 0.25)
    assert run.bytes() / run.dense_bytes() == pytest.approx(0.25, abs=0.02)
    assert run.kept_tokens() == N


def test_svd_kv_calibrated_beats_the_weights_on_held_out_activations(zoo_lm, tmp_path):
    """On held-out rows of the calibration's kind (evaluation seeds) on the zoo model, at every rank,
    the calibrated projection reconstructs the keys and values at most as badly as the weight
    SVD's, and both errors fall as the rank rises."""
    from harness.methods.kv._common import calibration_rows
    from harness.synthetic import EVAL_SEED_BASE

    cal = calibrated_svd_kv(zoo_lm, tmp_path, calib_sequences=8, calib_tokens=256)
    wts = method("svd_kv", calibration="weights")
    held = kv_inputs(zoo_lm, calibration_rows(zoo_lm, EVAL_SEED_BASE + 11, 2, 256).tolist())
    for layer, module in enumerate(zoo_lm.model.model.layers):
        attn = module.self_attn
        for kv, i in (("k", 0), ("v", 1)):
            full = held[layer] @ getattr(attn, f"{kv}_proj").weight.detach().double().numpy().T
            errs = {}
            for name, m in (("activations", cal), ("weights", wts)):
                errs[name] = [
                    np.linalg.norm(project(m, attn, held[layer], b)[i] - full) / np.linalg.norm(full)
                    for b in (0.1, 0.25, 0.5, 0.75)
                ]
                assert all(a >= b - 1e-6 for a, b in zip(errs[name], errs[name][1:])), (layer, kv, name, errs)
            assert all(c <= w + 1e-6 for c, w in zip(errs["activations"], errs["weights"])), (layer, kv, errs)


def test_svd_kv_calibrates_on_rows_with_needle_questions_and_digits(tiny_lm):
    """Calibrated on haystack alone (the first version), the bases had never seen a question or a
    digit, and at a quarter of the bytes the zoo needle fell from 0.83 (dense) to 0.25."""
    kv_helpers.assert_holds_needle_tokens(
        tiny_lm, method("svd_kv", calib_sequences=2, calib_tokens=256).calibration_ids(tiny_lm)
    )


def test_svd_kv_keeps_the_needle_at_a_quarter_of_the_bytes_on_the_zoo_model(zoo_lm, tmp_path):
    m = calibrated_svd_kv(zoo_lm, tmp_path, calib_sequences=8, calib_tokens=512)
    found = kv_helpers.needles_found(zoo_lm, m, (1.0, 0.25))
    assert found[1.0] == 3 and found[0.25] == found[1.0], found


def test_svd_kv_calibrated_kl_falls_as_the_budget_rises(zoo_lm, tmp_path):
    """On the zoo model, next-token KL(dense ‖ svd_kv) over held-out text never rises with the budget."""
    tiny_lm = zoo_lm
    m = calibrated_svd_kv(zoo_lm, tmp_path, calib_sequences=8, calib_tokens=256)
    x = torch.tensor([held_out_text(zoo_lm)])
    with torch.no_grad():
        dense = torch.log_softmax(tiny_lm.model(input_ids=x).logits[0].double(), -1)
        kls = []
        for budget in (0.1, 0.25, 0.5, 0.75):
            with m.apply(tiny_lm, MethodContext()):
                tiny_lm.kv_request = KVRequest(budget=budget)
                try:
                    got = torch.log_softmax(tiny_lm.forward_logits(x, torch.ones_like(x))[0].double(), -1)
                finally:
                    tiny_lm.kv_request = KVRequest()
            kls.append(float((dense.exp() * (dense - got)).sum(-1).mean()))
    assert all(a >= b for a, b in zip(kls, kls[1:])), kls
