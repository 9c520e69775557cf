"""RoPE methods against transformers' own RoPE types and against the formulas, computed independently."""

import copy
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from harness.interfaces import MethodContext
from harness.methods.rope._common import RopeShape, rope_shape
from harness.methods.rope.dynamic_ntk import DynamicNTK
from harness.methods.rope.ntk import NTK
from harness.methods.rope.pi import PI
from harness.methods.rope.yarn import YaRN

SHAPE = RopeShape(base=10000.0, dim=64, original_max=512)


def hf_config(rope: dict, max_pos=512, head_dim=64):
    return LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        max_position_embeddings=max_pos,
        rope_parameters={"rope_theta": 10000.0, **rope},
    )


def np_inv_freq(base, dim):
    return 1.0 / base ** (np.arange(0, dim, 2) / dim)


@pytest.mark.fidelity(
    "pi", reference="transformers ROPE_INIT_FUNCTIONS['linear']", tolerance="float32 assert_close defaults"
)
@pytest.mark.parametrize("factor", [1.0, 2.0, 4.0, 16.0])
def test_pi_equals_transformers_linear(factor):
    ref, att = ROPE_INIT_FUNCTIONS["linear"](hf_config({"rope_type": "linear", "factor": factor}), None)
    inv, scale = PI().freq_fn(SHAPE, factor)(100)
    torch.testing.assert_close(inv, ref)
    assert scale == att == 1.0
    np.testing.assert_allclose(inv.numpy(), np_inv_freq(10000.0, 64) / factor, rtol=1e-6)


@pytest.mark.fidelity("ntk", reference="the NTK-aware base·α^(d/(d−2)) (bloc97) in numpy", tolerance="rel 1e-5")
@pytest.mark.parametrize("alpha", [2.0, 8.0])
def test_ntk_matches_formula(alpha):
    inv, scale = NTK().freq_fn(SHAPE, alpha)(10)
    expected = np_inv_freq(10000.0 * alpha ** (64 / 62), 64)
    np.testing.assert_allclose(inv.numpy(), expected, rtol=1e-5)
    assert scale == 1.0
    assert inv[0] == pytest.approx(1.0)  # highest frequency untouched
    assert inv[-1].item() == pytest.approx(np_inv_freq(10000.0, 64)[-1] / alpha, rel=1e-4)  # lowest ~ /alpha


@pytest.mark.fidelity(
    "dynamic_ntk", reference="transformers ROPE_INIT_FUNCTIONS['dynamic']", tolerance="float32 assert_close defaults"
)
@pytest.mark.parametrize("factor,seq_len", [(2.0, 100), (2.0, 512), (2.0, 1500), (4.0, 3000)])
def test_dynamic_ntk_equals_transformers_dynamic(factor, seq_len):
    ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](
        hf_config({"rope_type": "dynamic", "factor": factor}), None, seq_len=seq_len
    )
    inv, _ = DynamicNTK().freq_fn(SHAPE, factor)(seq_len)
    torch.testing.assert_close(inv, ref)
    if seq_len <= 512:
        np.testing.assert_allclose(inv.numpy(), np_inv_freq(10000.0, 64), rtol=1e-6)


@pytest.mark.fidelity(
    "yarn", reference="transformers ROPE_INIT_FUNCTIONS['yarn']", tolerance="float32 assert_close defaults"
)
@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0, 32.0])
def test_yarn_equals_transformers_yarn(factor):
    cfg = hf_config({"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": 512})
    ref, att = ROPE_INIT_FUNCTIONS["yarn"](cfg, None)
    inv, scale = YaRN().freq_fn(SHAPE, factor)(10)
    torch.testing.assert_close(inv, ref)
    assert scale == pytest.approx(att)
    assert scale == pytest.approx(0.1 * math.log(factor) + 1)


@pytest.mark.fidelity(
    "yarn",
    reference="numpy re-derivation of jquesnelle/yarn's find_correction_range and linear ramp",
    tolerance="rel 1e-5",
)
def test_yarn_matches_official_formula_independently():
    """numpy re-derivation of jquesnelle/yarn's find_correction_range + linear ramp mask."""
    s, L, b, d = 8.0, 512, 10000.0, 64
    corr = lambda n: d * math.log(L / (n * 2 * math.pi)) / (2 * math.log(b))
    low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
    mask = 1 - ramp
    base = np_inv_freq(b, d)
    expected = base / s * (1 - mask) + base * mask
    inv, scale = YaRN().freq_fn(SHAPE, s)(1)
    np.testing.assert_allclose(inv.numpy(), expected, rtol=1e-5)
    assert scale == pytest.approx((0.1 * math.log(s) + 1) * 1.0)
    # dimensions with > 32 rotations within L keep theta, those with < 1 rotation are interpolated
    rotations = L * base / (2 * math.pi)
    assert np.allclose(inv.numpy()[rotations > 32 * 1.2], base[rotations > 32 * 1.2], rtol=1e-6)
    assert np.allclose(inv.numpy()[rotations < 0.8], base[rotations < 0.8] / s, rtol=1e-6)


def test_factor_is_derived_from_task_length(tiny_lm):
    shape, s = YaRN().resolve(tiny_lm, MethodContext(target_length=512))
    assert shape.original_max == 128 and s == 4.0
    _, s = YaRN(factor=3.0).resolve(tiny_lm, MethodContext(target_length=512))
    assert s == 3.0
    _, s = PI().resolve(tiny_lm, MethodContext(target_length=64))  # shorter than trained: no scaling
    assert s == 1.0


@pytest.mark.fidelity(
    "pi",
    "yarn",
    "dynamic_ntk",
    reference="a transformers model with that rope_type and the same weights (logits)",
    tolerance="rel 1e-4, abs 1e-4",
)
@pytest.mark.parametrize(
    "method,rope",
    [
        (PI(factor=4.0), {"rope_type": "linear", "factor": 4.0}),
        (YaRN(factor=4.0), {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
        (DynamicNTK(factor=2.0), {"rope_type": "dynamic", "factor": 2.0}),
    ],
)
def test_patched_model_equals_transformers_model_with_that_rope_type(method, rope, tiny_lm):
    """End to end: our patch on the default-RoPE model gives the logits of transformers' own
    implementation of the same RoPE type, and exiting restores the original logits."""
    model = tiny_lm.model
    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters = {"rope_theta": 10000.0, **rope}
    reference = AutoModelForCausalLM.from_config(cfg)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    ids = torch.randint(10, 2000, (2, 300))  # beyond the 128 trained positions
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with method.apply(tiny_lm, MethodContext(target_length=512)):
            patched = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        expected = reference(input_ids=ids).logits
    torch.testing.assert_close(patched, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, before)
    assert not torch.allclose(patched, before, atol=1e-3)


def test_rope_shape_reads_config(tiny_lm):
    shape = rope_shape(tiny_lm.model.config)
    assert shape == RopeShape(10000.0, 16, 128)


@pytest.mark.fidelity(
    "llama3", reference="transformers ROPE_INIT_FUNCTIONS['llama3']", tolerance="float32 assert_close defaults"
)
@pytest.mark.parametrize("factor,original", [(8.0, 8192), (4.0, 512), (2.0, 2048)])
def test_llama3_equals_transformers_llama3(factor, original):
    from harness.methods.rope.llama3 import Llama3

    cfg = hf_config(
        {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": original,
        },
        max_pos=original,
    )
    ref, att = ROPE_INIT_FUNCTIONS["llama3"](cfg, None)
    shape = RopeShape(10000.0, 64, original)
    inv, scale = Llama3().freq_fn(shape, factor)(1)
    torch.testing.assert_close(inv, ref)
    assert scale == att == 1.0
    # independent check of the three bands
    base = np_inv_freq(10000.0, 64)
    wavelen = 2 * math.pi / base
    hi, lo = wavelen < original / 4, wavelen > original / 1
    np.testing.assert_allclose(inv.numpy()[hi], base[hi], rtol=1e-6)
    np.testing.assert_allclose(inv.numpy()[lo], base[lo] / factor, rtol=1e-6)
