"""Which methods a loaded model can take, decided from the model before a cell runs.

Methods name what they replace (`Method.patches`): "rope" needs the model's rotary-embedding modules
(harness.methods.rope's override); "attention" (the core's attention override, harness.attention)
and "kv_cache" (the kv engine, harness.methods.kv) need attention layers whose projections
harness.projections can read (separate q/k/v, Phi-3's qkv_proj, GPT-NeoX's and Falcon's
query_key_value; per-head or whole-projection query/key norms), a rotate-half rotary embedding,
full (not sliding-window) attention and no logit soft-capping, since both compute plain softmax
attention over the whole cache; "prefill" (HCM, which runs the decoder layers itself) needs one of
the plain pre-norm decoders it was written for. A model that does not fit is refused with the reason (harness.errors.Refused: exit 2 in
`harness eval`, a "refused" outcome in a sweep) instead of a traceback or a silently different
model. Models with learned absolute positions (gpt2, opt) also get a clear error for a prompt
longer than their position table, instead of an IndexError deep in the embedding."""

from __future__ import annotations

from harness.errors import Refused

POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")  # gpt2, opt, gpt-j-style names


def rotary_modules(model) -> list:
    return [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]


def architecture(model) -> str:
    return (getattr(model.config, "architectures", None) or [type(model).__name__])[0]


def position_limit(model) -> int | None:
    """The positions a model with learned absolute position embeddings has (None: not such a model)."""
    import torch

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_TABLES:
            return int(getattr(model.config, "max_position_embeddings", None) or m.num_embeddings)
    return None


def position_encoding(model) -> str:
    from harness.attention import ALIBI_CONFIG_FLAG

    if getattr(model.config, ALIBI_CONFIG_FLAG, None) == "alibi":
        return "alibi"
    if rotary_modules(model):
        return "rope"
    return "learned" if position_limit(model) else "none"


def rope_refusal(model) -> str | None:
    """Why RoPE methods cannot act on this model (None: they can)."""
    arch = architecture(model)
    tables = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding") and not hasattr(m, "inv_freq")]
    if tables:  # gemma3: local and global bases in one module
        return (
            f"{arch}'s rotary embedding ({type(tables[0]).__name__}) keeps one frequency table per layer "
            f"type, which the RoPE overrides (one table for every layer) do not handle"
        )
    rotary = rotary_modules(model)
    if rotary and _rope_theta(model.config.get_text_config()) is not None:  # LLaVA: its language model's
        if _rope_layout(rotary[0]) == "interleaved":  # cohere, GPT-J style
            return (
                f"{arch} rotates interleaved dimension pairs (GPT-J style), not the rotate-half layout "
                f"(Llama) that the RoPE and attention overrides compute"
            )
        return None
    limit = position_limit(model)
    what = f"learned absolute position embeddings ({limit} positions)" if limit else "no rotary position embedding"
    return f"{architecture(model)} has {what}, no RoPE: methods that rescale or remap RoPE positions do not apply"


ENGINES = {"attention": "the attention override", "kv_cache": "the kv engine"}
# model types whose decoder a method that runs the layers itself ("prefill": HCM's hierarchical
# merge) computes exactly: embeddings (unscaled) -> pre-norm layers (input_layernorm, attention,
# residual, post_attention_layernorm, MLP, residual) -> norm -> lm_head
PLAIN_DECODERS = ("llama", "mistral", "qwen2", "qwen3")


def attention_refusal(model, patch: str = "attention") -> str | None:
    """Why the core's attention override (patch "attention") or the kv engine ("kv_cache") cannot
    replace this model's attention layers (None: it can). Both compute plain softmax attention
    over the whole cache between the layer's own projections (harness.projections), rotated by the
    model's own rotary module in the rotate-half layout."""
    engine = ENGINES[patch]
    cfg, arch = model.config.get_text_config(), architecture(model)  # a vision-language model: its language model's
    tables = any(type(m).__name__.endswith("RotaryEmbedding") for m in model.modules())  # (gemma3's: no inv_freq)
    if patch == "kv_cache" and not rotary_modules(model) and not tables:
        limit = position_limit(model)
        what = f"learned absolute position embeddings ({limit} positions)" if limit else "no rotary position embedding"
        return f"{arch} has {what}, no RoPE: {engine} rotates the keys it caches with the model's RoPE"
    reason = rope_refusal(model)
    if reason:
        return reason
    from harness.projections import layout_refusal

    layout = layout_refusal(model)
    if layout:
        return f"{arch}'s attention layers cannot be read by {engine}: {layout}"
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or []) or (
        getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False
    ):
        return (
            f"{arch} uses sliding-window attention (window {cfg.sliding_window}), which {engine} "
            f"(full attention over the cache) would silently drop"
        )
    if getattr(cfg, "attn_logit_softcapping", None):
        return f"{arch} soft-caps its attention logits, which {engine} would silently drop"
    if getattr(cfg, "no_rope_layers", None) is not None and not all(getattr(cfg, "no_rope_layers")):
        return f"{arch} has layers without RoPE (no_rope_layers), which {engine} would rotate"
    return None


def prefill_refusal(model) -> str | None:
    """Why a method that runs the decoder layers itself (HCM) cannot run this model's."""
    cfg, arch = model.config, architecture(model)
    if getattr(cfg, "model_type", None) not in PLAIN_DECODERS:
        return (
            f"{arch} ({getattr(cfg, 'model_type', '?')}) is not one of the decoders the hierarchical "
            f"prefill runs layer by layer itself ({', '.join(PLAIN_DECODERS)}: unscaled embeddings, "
            f"pre-norm attention and MLP with residuals)"
        )
    return None


def refusal(model, method) -> str | None:
    """Why `method` (a class or an instance) cannot act on `model` (None: it can)."""
    patches = getattr(method, "patches", frozenset())
    reason = None
    if "attention" in patches:
        reason = attention_refusal(model, "attention")
    elif "kv_cache" in patches and getattr(method, "engine", True):
        reason = attention_refusal(model, "kv_cache")
    elif "rope" in patches:
        reason = rope_refusal(model)
    if not reason and "prefill" in patches:
        reason = prefill_refusal(model)
    if not reason and getattr(method, "separate_projections", False):
        from harness.projections import attention_modules, projections

        p = projections(attention_modules(model)[0])
        if p.layout != "separate" or p.out_name != "o_proj" or p.norms:
            has = [f"a fused {p.fused_name}" if p.layout != "separate" else f"output {p.out_name}"]
            has += ["query/key norms"] if p.norms else []
            reason = (
                f"it reads separate q_proj/k_proj/v_proj/o_proj linear layers itself (calibration or "
                f"rewritten projections), and {p.name} has {' and '.join(has)}"
            )
    return f"method {method.name} refuses {architecture(model)}: {reason}" if reason else None


def check(loaded, cell) -> None:
    """Refuse a cell whose methods or length the model cannot take, before it runs."""
    model = loaded.model
    if position_encoding(model) == "alibi" and not any(m.name == "alibi" for m in cell.methods):
        # loaded plainly, the Llama class would rotate with a RoPE the model never saw
        raise Refused(
            f"{cell.model} was pretrained with ALiBi position biases: evaluate it with "
            f"--method alibi (method {cell.method_name} would run it with RoPE)"
        )
    sharing = getattr(model.config, "harness_kv_sharing", None) or 1
    other = [
        m.name for m in cell.methods if m.name != "cla" and {"attention", "kv_cache"} & set(getattr(m, "patches", ()))
    ]
    if sharing > 1 and other:  # Cross-Layer Attention (harness.cla): reusing layers have no K/V projections
        # (its own layers run it natively, so baseline and RoPE methods are fine; the kv engine and the
        # attention override would compute K/V in every layer)
        raise Refused(
            f"{cell.model} was pretrained with Cross-Layer Attention (K/V shared by {sharing} layers), which "
            f"method {other[0]} (it replaces the attention or the KV cache) does not support: evaluate its KV "
            f"cache with --method cla"
        )
    for m in cell.methods:
        reason = refusal(model, m)
        if reason:
            raise Refused(reason)
    limit, length = position_limit(model), cell.task.target_length()
    if limit and length and length > limit:
        raise Refused(too_long(model, length, limit))


def too_long(model, length: int, limit: int) -> str:
    return (
        f"{architecture(model)} has learned absolute position embeddings for {limit} positions; "
        f"a sequence of {length} tokens does not fit (lower the task's context length, or use a RoPE model)"
    )


def _rope_layout(rotary) -> str | None:
    """ "half" when cos = cat(f, f) (Llama's rotate-half), "interleaved" when cos = f repeated in pairs;
    None when the module cannot be run (the check then passes)."""
    import torch

    try:
        if any(b.is_meta for b in rotary.buffers()):  # a skeleton (harness list): build it for real
            rotary = type(rotary)(rotary.config)
        cos, _ = rotary(torch.zeros(1, 1, 4), torch.arange(1, 4)[None])
    except Exception:  # an unusual signature: nothing to say about its layout
        return None
    d = cos.shape[-1]
    if d < 4 or torch.allclose(cos[..., : d // 2], cos[..., d // 2 :]):
        return "half"
    return "interleaved" if torch.allclose(cos[..., 0::2], cos[..., 1::2]) else None


def _projections(layers) -> str:
    """`PhiAttention: q_proj, k_proj, v_proj, dense`: the linear layers the model's attention has."""
    import torch

    if not layers:
        return "no attention layers found"
    names = [n for n, c in layers[0].named_children() if isinstance(c, torch.nn.Linear)]
    return f"{type(layers[0]).__name__}: {', '.join(names) or 'no linear layers'}"


def _rope_theta(cfg):
    rope = getattr(cfg, "rope_parameters", None) or {}
    return rope.get("rope_theta", getattr(cfg, "rope_theta", None))
