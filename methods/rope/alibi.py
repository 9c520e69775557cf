from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.rope._attention import AttentionInputs, AttentionMethod, attention_override, softmax_attend

ALIBI_CONFIG_FLAG = "harness_position_encoding"   # config.json field of models pretrained with ALiBi


def alibi_slopes(heads: int) -> torch.Tensor:
    """m_h = 2^(−8h/H), h = 1..H; for H not a power of two, the slopes of the nearest lower power of
    two followed by every other slope of twice that power (the paper's reference code)."""
    def power_of_two(n: int) -> list[float]:
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]
    if heads & (heads - 1) == 0:
        return torch.tensor(power_of_two(heads))
    low = 2 ** math.floor(math.log2(heads))
    return torch.tensor(power_of_two(low) + power_of_two(2 * low)[0::2][:heads - low])


def alibi_attend(a: AttentionInputs) -> torch.Tensor:
    """Attention with no rotation and the bias −m_h·(i − j) added to each logit."""
    slopes = alibi_slopes(a.q.shape[1]).to(a.q.device, a.q.dtype)[None, :, None, None]
    distance = (a.q_pos[:, :, None] - a.k_pos[:, None, :]).unsqueeze(1).to(a.q.dtype)
    logits = (a.q @ a.k.transpose(2, 3)) * a.scaling - slopes * distance
    return softmax_attend(logits, a.mask(), a.v)


@register
@dataclass
class ALiBi(AttentionMethod, LMMethod):
    """ALiBi — Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases Enables
    Input Length Extrapolation" (arXiv:2108.12409).

    logit_ij = q_i·k_j − m_h·(i − j) for j ≤ i, no position embedding on q or k, head slopes
    m_h = 2^(−8h/H). A pretraining-time scheme: it only applies to models trained with it (their
    config carries harness_position_encoding = "alibi", as zoo:tiny-llama-alibi will); RoPE models
    are refused rather than silently evaluated with a position encoding they never saw.
    """
    name = "alibi"
    family = "rope"
    paper = "Train Short, Test Long: Attention with Linear Biases (arXiv:2108.12409)"
    patches = frozenset({"attention", "kv_cache", "rope"})
    smoke_model_config = {ALIBI_CONFIG_FLAG: "alibi"}

    def apply(self, lm, ctx):
        if getattr(lm.model.config, ALIBI_CONFIG_FLAG, None) != "alibi":
            raise UserError(f"method alibi needs a model pretrained with ALiBi (config "
                            f"{ALIBI_CONFIG_FLAG}='alibi'); {lm.loaded.id} uses RoPE")
        return attention_override(lm.model, alibi_attend, counter=lm.telemetry)
