"""Attention override shared by the position-remapping methods (SelfExtend, DCA, ...).

transformers rotates keys *before* caching them, but these methods give one key several
positions (its own, a grouped one, a chunk-relative one). The override therefore caches keys
*before* rotation and hands the method raw queries, raw keys, values and absolute positions; the
method rotates them as its rule says, through the model's own rotary module (so a RoPE-scaling
method composed before it, e.g. yarn+selfextend, still applies). Because nothing rotated is ever
cached, generation with the KV cache computes exactly what a full recomputation would."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from harness.patching import patched_forwards


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE (rotate-half convention, as Llama) to x [b, h, L, d] with cos/sin [b, L, r];
    only the first r dimensions rotate when the model's RoPE is partial."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    xr, rest = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    out = xr * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


@dataclass
class AttentionInputs:
    q: torch.Tensor            # [b, h, Lq, d] queries, not rotated
    k: torch.Tensor            # [b, h, Lk, d] keys, not rotated (KV heads already repeated)
    v: torch.Tensor            # [b, h, Lk, d]
    q_pos: torch.Tensor        # [b, Lq] absolute positions
    k_pos: torch.Tensor        # [b, Lk]
    allowed: torch.Tensor      # [b, 1, Lq, Lk] bool: causal and padding mask
    scaling: float
    rope: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]   # positions [b, L] -> cos, sin
    layer: int = 0             # the attention layer's index (methods that keep per-layer state)


def softmax_attend(logits: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(probs).to(v.dtype) @ v      # a fully masked (padding) row gives zeros


def _allowed(attention_mask, b: int, lq: int, lk: int, past: int, device) -> torch.Tensor:
    if attention_mask is None:   # no padding: causal by cache index
        qi = torch.arange(past, past + lq, device=device)[:, None]
        return (torch.arange(lk, device=device)[None, :] <= qi)[None, None].expand(b, 1, lq, lk)
    m = attention_mask[..., :lk]
    return m if m.dtype == torch.bool else m == 0


def _attention_modules(model):
    return [m for m in model.modules()
            if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "layer_idx"))]


def _rotary_module(model):
    found = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]
    if not found:
        raise ValueError("the model has no rotary embedding module")
    return found[0]


@contextlib.contextmanager
def attention_override(model, attend: Callable[[AttentionInputs], torch.Tensor], counter=None):
    """Replace every attention layer's forward; `attend` returns the output [b, h, Lq, d].
    counter: telemetry that counts the patched calls (the methods' effect check)."""
    modules = _attention_modules(model)
    if not modules:
        raise ValueError("no Llama-style attention layers (q_proj/k_proj/v_proj/o_proj) found")
    rotary = _rotary_module(model)
    key_positions: dict[int, torch.Tensor] = {}

    def make_forward(m):
        groups = m.config.num_attention_heads // m.config.num_key_value_heads

        def forward(hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                    cache_position=None, position_ids=None, **kwargs):
            b, lq = hidden_states.shape[:2]
            shape = (b, lq, -1, m.head_dim)
            q = m.q_proj(hidden_states).view(shape).transpose(1, 2)
            k = m.k_proj(hidden_states).view(shape).transpose(1, 2)
            v = m.v_proj(hidden_states).view(shape).transpose(1, 2)
            if position_ids is None:
                position_ids = cache_position[None]
            q_pos = position_ids.expand(b, -1)
            past = 0
            if past_key_values is not None:
                past = past_key_values.get_seq_length(m.layer_idx)
                k, v = past_key_values.update(k, v, m.layer_idx, {"cache_position": cache_position})
            k_pos = q_pos if past == 0 else torch.cat([key_positions[m.layer_idx], q_pos], dim=1)
            key_positions[m.layer_idx] = k_pos
            lk = k.shape[2]
            inputs = AttentionInputs(
                q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), q_pos, k_pos,
                _allowed(attention_mask, b, lq, lk, past, hidden_states.device), m.scaling,
                lambda pos: tuple(t.to(q.dtype) for t in rotary(q, pos)), m.layer_idx)
            out = attend(inputs).transpose(1, 2).reshape(b, lq, -1)
            return m.o_proj(out), None
        return forward

    with patched_forwards(modules, make_forward, counter, ATTENTION_CALLS):
        yield


ATTENTION_CALLS = "patched_calls.attention"


class AttentionMethod:
    """Mixin for methods that replace attention: the effect check is that the patch ran."""

    def check_effect(self, lm, ctx, result) -> str | None:
        return None if lm.telemetry[ATTENTION_CALLS] else "the patched attention was never called"
