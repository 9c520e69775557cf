"""The attention override and the kv engine across model families (harness.projections): with the
model's own positions, the patched model computes what transformers' own unpatched forward
computes. The unpatched model is the independent reference, on a tiny random checkpoint of each
family (tests/tiny_families.py): fused qkv_proj (Phi-3), per-head query_key_value with partial
rotary (GPT-NeoX), dense output with partial rotary and per-head LayerNorms (Phi), per-head RMSNorms
with head_dim != hidden/heads (Qwen3), norms over the whole projection (OLMo2), Falcon's three
query_key_value layouts (multi-query, grouped, per-head), and GQA (two key/value heads for four
query heads) in most of them."""

import pytest
import torch

from harness import compat, models, registry
from harness.attention import AttentionInputs, attend_lse, attention_override, rotate
from harness.interfaces import MethodContext
from harness.lm import LM, KVRequest
from harness.projections import attention_modules, projections
from harness.methods.rope.dca import DCA
from harness.methods.rope.selfextend import SelfExtend

from tests.kv_helpers import method
from tests.tiny_families import make_family

registry.load()
FAMILIES = [
    "llama",
    "qwen2",
    "qwen3",
    "olmo2",
    "gemma",
    "phi3",
    "phi",
    "phi-qknorm",
    "gpt_neox",
    "persimmon",
    "falcon",
    "falcon-gqa",
    "falcon-mha",
]
LAYOUTS = {
    "phi3": "qkv_proj",
    "gpt_neox": "per_head",
    "persimmon": "per_head",
    "falcon": "multi_query",
    "falcon-gqa": "falcon_grouped",
    "falcon-mha": "per_head",
}
N = 48


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = models.load(make_family(tmp_path_factory.mktemp(name), name), "cpu")
        return made[name]

    return get


def plain_attend(a: AttentionInputs) -> torch.Tensor:
    """Causal softmax attention with ordinary RoPE at the given positions: the model's own rule."""
    q, k = rotate(a.q, *a.rope(a.q_pos)), rotate(a.k, *a.rope(a.k_pos))
    return attend_lse(q, k, a.v, a.scaling, a.mask())[0]


def prompt(seed: int = 0, n: int = N, batch: int = 2) -> torch.Tensor:
    return torch.randint(5, 200, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_patched_forward_equals_the_unpatched_model(family, name):
    loaded = family(name)
    model = loaded.model
    assert compat.attention_refusal(model) is None and compat.attention_refusal(model, "kv_cache") is None
    p = projections(attention_modules(model)[0])
    assert p.layout == LAYOUTS.get(name, "separate")
    ids = prompt()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with attention_override(model, plain_attend):
            plain = model(input_ids=ids).logits
        # SelfExtend with a neighbour window past the prompt and DCA with one chunk: the model's positions
        with attention_override(model, lambda a: SelfExtend.attend(a, 4, 4 * N)):
            selfextend = model(input_ids=ids).logits
        with attention_override(model, lambda a: DCA.attend(a, 4 * N, 2 * N)):
            dca = model(input_ids=ids).logits
    for out in (plain, selfextend, dca):
        assert (out - ref).abs().max().item() < 1e-5, (name, (out - ref).abs().max().item())
    with torch.no_grad(), attention_override(model, lambda a: plain_attend(a) * 0):
        assert (model(input_ids=ids).logits - ref).abs().max().item() > 1e-3  # the patch is what ran


@pytest.mark.parametrize("name", FAMILIES)
def test_dense_kv_engine_equals_the_unpatched_model(family, name):
    """The kv engine at budget 1 (no compression), prefill then 20 tokens decoded one at a time
    from its own cache, gives the model's logits."""
    lm = LM(family(name), batch_size=1)
    ids = prompt(1, batch=1)
    with torch.no_grad():
        ref = lm.model(input_ids=ids).logits[0]
    with method("snapkv").apply(lm, MethodContext()):
        lm.kv_request = KVRequest(budget=1.0, decode_tokens=20)
        try:
            out = lm.forward_logits(ids, torch.ones_like(ids))[0]
        finally:
            lm.kv_request = KVRequest()
    assert (out - ref).abs().max().item() < 1e-4, (name, (out - ref).abs().max().item())


@pytest.mark.parametrize("name", ["phi3", "gpt_neox", "falcon-gqa", "qwen3"])
def test_generation_with_the_cache_equals_the_unpatched_model(family, name):
    """Keys cached before rotation by the override, decoded token by token through generate()."""
    model = family(name).model
    ids = prompt(2, n=24, batch=1)
    kw = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        with attention_override(model, plain_attend):
            out = model.generate(ids, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    for s, r in zip(out.scores, ref.scores):
        assert (s - r).abs().max().item() < 1e-4


def test_the_norms_are_applied_not_skipped(family):
    """Qwen3's per-head and OLMo2's whole-projection query/key norms: with them removed from the
    adapter the logits differ, so the equality above is not blind to them."""
    for name in ("qwen3", "olmo2", "phi-qknorm", "persimmon"):
        model = family(name).model
        p = projections(attention_modules(model)[0])
        assert set(p.norms) == {"q", "k"} and {k for _, k in p.norms.values()} == (
            {"flat"} if name == "olmo2" else {"head"}
        )
        ids = prompt()
        with torch.no_grad():
            ref = model(input_ids=ids).logits
            saved = {m: projections(m).norms for m in attention_modules(model)}
            try:
                for m in saved:
                    projections(m).norms = {}
                with attention_override(model, plain_attend):
                    skipped = model(input_ids=ids).logits
            finally:
                for m, n in saved.items():
                    projections(m).norms = n
        assert (skipped - ref).abs().max().item() > 1e-3, name


@pytest.mark.parametrize(
    "name,words",
    [
        ("cohere", "rotates interleaved dimension pairs"),
        ("gemma2", "sliding-window attention (window 64)"),
        ("mistral-sw", "sliding-window attention (window 64)"),
        ("gpt2", "no RoPE: the kv engine rotates the keys it caches"),
    ],
)
def test_what_stays_refused_is_refused_for_the_kv_engine_too(family, name, words):
    """Before: a kv method on these silently computed something else (sliding windows dropped,
    interleaved pairs rotated as halves) or failed with a traceback (no rotary module)."""
    model = family(name).model
    reason = compat.refusal(model, registry.method("snapkv"))
    assert reason and words in reason and reason.startswith("method snapkv refuses ")


def test_methods_reading_separate_projections_refuse_fused_layouts(family):
    model = family("phi3").model
    for name in ("svd_kv", "coupled_quant", "less", "dmc"):
        reason = compat.refusal(model, registry.method(name))
        assert reason and "a fused qkv_proj" in reason, (name, reason)
    assert compat.refusal(family("llama").model, registry.method("svd_kv")) is None
