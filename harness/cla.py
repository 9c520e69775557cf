"""Cross-Layer Attention (Brandon et al., NeurIPS 2024, arXiv:2405.12981): the Llama layout of the
zoo's CLA model, a pretraining-time architecture that the `cla` method (methods/kv/cla.py) evaluates.

Consecutive layers form groups of s (the sharing factor, config.json field `harness_kv_sharing`;
CLA2 = pairs). Only a group's first layer (its *producer*) has W_K and W_V: it computes keys and
values, rotates the keys (RoPE) and writes the KV cache. The other layers of the group (its
*reusers*) keep their own W_Q and W_O, rotate their queries at their true positions and attend to
the producer's post-RoPE keys and values of the current step: the producer's cache entry after this
step's update (or, without a cache, the keys and values it just computed). A reuser never appends to
the cache, so the cache holds entries for the producing layers only:
KV bytes/token = 2 · n_kv · d_head · ceil(n_layers / s) · bytes per element.

Nothing is tied: a reusing layer simply has no K/V projections. `CLALlamaForCausalLM` builds the
reusing layers without them, so a saved checkpoint holds none and loading one through
harness.models (which picks this class when the config carries the flag) initialises nothing new.
Outside the harness, transformers would load the folder as a plain Llama with random K/V
projections in the reusing layers (as it would run the zoo's ALiBi model with RoPE): load it with
harness.models.load.

The producer hands its keys and values to its reusers through a small dict the group's attention
modules share (layers run in order within a forward; the group's last reuser empties it, so nothing
outlives the forward). Gradient checkpointing, which reruns single layers, is therefore not
supported."""

from __future__ import annotations

import math

import torch
from transformers import LlamaForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaAttention, eager_attention_forward

from harness.attention import rotate

CLA_CONFIG_FLAG = "harness_kv_sharing"  # config.json: layers per KV-sharing group (s >= 2: a CLA model)


def kv_sharing(config) -> int:
    """The sharing factor s (1: every layer has its own K/V, a plain model)."""
    return int(getattr(config, CLA_CONFIG_FLAG, None) or 1)


def producer(config, layer: int) -> int:
    """The layer whose keys and values `layer` attends to: the first of its group."""
    return layer - layer % kv_sharing(config)


def producing_layers(config) -> list[int]:
    return list(range(0, config.num_hidden_layers, kv_sharing(config)))


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_bytes_per_token(config, element_bytes: float = 2) -> float:
    """2 · n_kv · d_head · (producing layers) · bytes: the cache one token costs (fp16 by default)."""
    return 2 * config.num_key_value_heads * head_dim(config) * len(producing_layers(config)) * element_bytes


class CLAAttention(LlamaAttention):
    """A Llama attention layer of a CLA model: a producer (K/V projections, writes the cache) or a
    reuser (no K/V projections; attends to its producer's keys and values)."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        s = kv_sharing(config)
        self.kv_producer = producer(config, layer_idx)
        self.kv_last_reader = min(self.kv_producer + s, config.num_hidden_layers) - 1
        if self.reuses:
            del self.k_proj, self.v_proj
        self.kv_shared: dict = {}  # the group's hand-over dict (set by CLALlamaForCausalLM)

    @property
    def reuses(self) -> bool:
        return self.kv_producer != self.layer_idx

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        cache_position: torch.LongTensor | None = None,
        **kwargs,
    ):
        input_shape = hidden_states.shape[:-1]
        shape = (*input_shape, -1, self.head_dim)
        cos, sin = position_embeddings
        q = rotate(self.q_proj(hidden_states).view(shape).transpose(1, 2), cos, sin)
        if not self.reuses:
            k = rotate(self.k_proj(hidden_states).view(shape).transpose(1, 2), cos, sin)
            v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
            if past_key_values is not None:  # the group's only cache entry
                k, v = past_key_values.update(
                    k, v, self.layer_idx, {"sin": sin, "cos": cos, "cache_position": cache_position}
                )
            if self.kv_last_reader > self.layer_idx:
                self.kv_shared["kv"] = (k, v)
        else:
            if "kv" not in self.kv_shared:
                raise RuntimeError(
                    f"CLA layer {self.layer_idx} ran before its producer (layer {self.kv_producer}) in this forward"
                )
            k, v = self.kv_shared["kv"] if self.layer_idx < self.kv_last_reader else self.kv_shared.pop("kv")
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attend(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class CLALlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM whose attention layers are CLAAttention (reusing layers without K/V
    projections). Built from a LlamaConfig carrying `harness_kv_sharing` >= 2."""

    supports_gradient_checkpointing = False

    def post_init(self):
        # (called once at the end of LlamaForCausalLM.__init__: the layers are swapped before the
        # one weight-initialisation pass, so every weight gets the config's initialisation)
        if kv_sharing(self.config) < 2:
            raise ValueError(f"a CLA model needs config {CLA_CONFIG_FLAG} >= 2")
        groups: dict[int, dict] = {}
        for i, layer in enumerate(self.model.layers):
            attn = CLAAttention(self.config, i)
            attn.kv_shared = groups.setdefault(attn.kv_producer, {})
            layer.self_attn = attn
        super().post_init()


def model_class(config):
    """The class harness.models loads a checkpoint with: CLALlamaForCausalLM for a CLA config,
    None (transformers' Auto class) otherwise."""
    if kv_sharing(config) < 2:
        return None
    if getattr(config, "model_type", None) != "llama":
        from harness.errors import UserError

        raise UserError(
            f"config {CLA_CONFIG_FLAG}={kv_sharing(config)} marks a Cross-Layer Attention model, which the "
            f"harness implements for Llama only (model_type {getattr(config, 'model_type', None)!r})"
        )
    return CLALlamaForCausalLM


def build(config, sharing: int):
    """A new (randomly initialised) CLA Llama with sharing factor `sharing`; the flag goes into
    the config, so it is saved in config.json."""
    if sharing < 2 or sharing != int(sharing):
        raise ValueError(f"CLA sharing factor must be an integer >= 2, got {sharing!r}")
    setattr(config, CLA_CONFIG_FLAG, int(sharing))
    return CLALlamaForCausalLM(config)


def reusing_layers(model) -> list[CLAAttention]:
    return [m for m in model.modules() if isinstance(m, CLAAttention) and m.reuses]


def kv_source(module) -> int:
    """The layer whose cache an attention module reads: its producer for a CLA reuser, else itself."""
    return getattr(module, "kv_producer", module.layer_idx)


def describe(config) -> str:
    s = kv_sharing(config)
    n = config.num_hidden_layers
    return f"CLA{s}: {math.ceil(n / s)} of {n} layers compute and cache K/V"
