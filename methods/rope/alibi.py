from __future__ import annotations

from dataclasses import dataclass


from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register
from harness.attention import ALIBI_CONFIG_FLAG, AttentionMethod, alibi_attend, alibi_slopes, attention_override

__all__ = ["ALIBI_CONFIG_FLAG", "ALiBi", "alibi_attend", "alibi_slopes"]  # the math lives in the core


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
            raise UserError(
                f"method alibi needs a model pretrained with ALiBi (config "
                f"{ALIBI_CONFIG_FLAG}='alibi'); {lm.loaded.id} uses RoPE"
            )
        return attention_override(lm.model, alibi_attend, counter=lm.telemetry)
