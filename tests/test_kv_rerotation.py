"""StreamingLLM's cache-relative positions: kept keys re-rotated exactly (against rotating at the
cache positions, and re-rotating every step) under the model's current RoPE."""

import pytest
import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from harness import registry
from harness.attention import _rotary_module
from harness.interfaces import MethodContext
from harness.methods.kv._rerotation import effective_inv_freq, rerotate
from harness.lm import KVRequest
from tests import kv_helpers
from tests.kv_helpers import N, method, scored_run

registry.load()
ids, eager = kv_helpers.ids, kv_helpers.eager  # the module fixtures the kv test files share


def test_streaming_llm_keys_equal_keys_rotated_at_cache_positions(tiny_lm, ids, eager):
    """pos_shift semantics: the kept keys are the model's keys at contiguous positions 0..m-1."""
    m_keep = 24
    run = scored_run(tiny_lm, method("streaming_llm"), ids)  # uncompressed, then evict by hand
    rotary = _rotary_module(tiny_lm.model)
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


@pytest.mark.fidelity(
    "streaming_llm",
    reference="transformers' DynamicCache evicted and re-rotated to cache positions after every step (pos_shift)",
    tolerance="logits abs 1e-4",
)
def test_streaming_llm_decoding_equals_rerotating_every_step(tiny_lm, ids):
    """The deferred window shift (RoPE of the fed tokens advanced, sinks re-rotated) gives the logits
    of pos_shift's re-rotation of every kept key at every step: transformers' own cache, evicted and
    re-rotated to cache positions 0..m-1 after each fed token (and after a 5-token chunk)."""
    rotary, model, s, m = _rotary_module(tiny_lm.model), tiny_lm.model, 4, 24
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


@pytest.mark.parametrize("rope", [None, "yarn"])
def test_rerotation_is_exact_under_the_models_current_rope(tiny_lm, rope):
    """rerotate(RoPE_p(k), δ) == RoPE_{p+δ}(k), also when a RoPE-scaling method patched the rotary."""
    rotary = _rotary_module(tiny_lm.model)
    ctx = method(rope, factor=4).apply(tiny_lm, MethodContext(target_length=2048)) if rope else None
    with ctx if ctx is not None else torch.no_grad():
        inv = effective_inv_freq(rotary)
        k = torch.randn(1, 2, 5, rotary.inv_freq.shape[0] * 2)
        p, delta = torch.tensor([[3, 50, 7, 100, 9]]), torch.tensor([[-3, -40, 0, 11, -2]])
        cos, sin = rotary(k, p)
        rot, _ = apply_rotary_pos_emb(k, k, cos, sin)
        cos2, sin2 = rotary(k, p + delta)
        expect, _ = apply_rotary_pos_emb(k, k, cos2, sin2)
        assert torch.allclose(rerotate(rot, delta.expand(1, 2, 5), inv), expect, atol=1e-4)
        if rope:
            assert not torch.allclose(inv, rotary.inv_freq.float())
