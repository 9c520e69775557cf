from __future__ import annotations

from dataclasses import dataclass, field

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.rope._common import RopeMethod, inv_freq, linear_ramp, yarn_correction_range, yarn_mscale


@register
@dataclass
class YaRN(RopeMethod, LMMethod):
    """YaRN — Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language
    Models" (arXiv:2309.00071); defaults from jquesnelle/yarn `LlamaYaRNScaledRotaryEmbedding`.

    NTK-by-parts: dimensions whose wavelength completes more than beta_fast rotations within L
    keep theta_i, those with fewer than beta_slow use theta_i/s, a linear ramp in between;
    plus the temperature sqrt(1/t) = 0.1 ln s + 1 on cos and sin (times attn_factor).

    factor: s; None = target context / original context. original_max_position_embeddings:
    L; None = the model's. beta_fast, beta_slow: ramp bounds in rotations (32, 1).
    attn_factor: multiplier of the temperature term (1). truncate: floor/ceil the ramp bounds,
    as the official code does (True).
    """

    name = "yarn"
    paper = "YaRN: Efficient Context Window Extension of LLMs (arXiv:2309.00071)"
    ranges = {
        "factor": "[1, inf)",
        "original_max_position_embeddings": "[1, inf)",
        "beta_fast": "(0, inf)",
        "beta_slow": "(0, inf)",
        "attn_factor": "(0, inf)",
    }  # checked by params.build before any model loads
    factor: float | None = field(default=None, metadata={"help": "scale s; None = derived from the task"})
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 1.0
    truncate: bool = True

    def original_max(self, shape):
        return self.original_max_position_embeddings or shape.original_max

    def freq_fn(self, shape, s):
        L = shape.original_max
        extrapolation = inv_freq(shape.base, shape.dim)
        interpolation = extrapolation / s
        low, high = yarn_correction_range(self.beta_fast, self.beta_slow, shape, L, self.truncate)
        keep = 1 - linear_ramp(low, high, shape.dim // 2)  # 1 = keep theta_i (extrapolate)
        inv = interpolation * (1 - keep) + extrapolation * keep
        scaling = yarn_mscale(s) * self.attn_factor
        return lambda seq_len: (inv, scaling)
