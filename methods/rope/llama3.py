from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.rope._common import RopeMethod, inv_freq


@register
@dataclass
class Llama3(RopeMethod, LMMethod):
    """Llama-3.1 RoPE scaling — Meta, "The Llama 3 Herd of Models" (arXiv:2407.21783); the
    `llama3` rope type of transformers and of Meta's reference code.

    Per dimension, with wavelength w_i = 2π/θ_i and L the original context: w_i < L/high_freq_factor
    keeps θ_i; w_i > L/low_freq_factor uses θ_i/s; in between a smooth mix with
    smooth = (L/w_i − low)/(high − low), θ' = (1−smooth)·θ/s + smooth·θ. No attention scaling.

    factor: s (Llama-3.1 uses 8); None = target context / original context. low_freq_factor 1,
    high_freq_factor 4 (Llama-3.1's). original_max_position_embeddings: L (8192 for Llama-3.1);
    None = the model's. On a checkpoint whose config already carries llama3 scaling this
    replaces it (it does not stack).
    """

    name = "llama3"
    paper = "The Llama 3 Herd of Models (arXiv:2407.21783)"
    ranges = {
        "factor": "[1, inf)",
        "low_freq_factor": "(0, inf)",
        "high_freq_factor": "(0, inf)",
        "original_max_position_embeddings": "[1, inf)",
    }  # checked by params.build before any model loads
    factor: float | None = field(default=None, metadata={"help": "scale s; None = derived from the task"})
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None

    def __post_init__(self):
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("high_freq_factor must exceed low_freq_factor")

    def original_max(self, shape):
        return self.original_max_position_embeddings or shape.original_max

    def freq_fn(self, shape, s):
        theta = inv_freq(shape.base, shape.dim)
        L = shape.original_max
        wavelen = 2 * math.pi / theta
        smooth = ((L / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)).clamp(0, 1)
        inv = (1 - smooth) * theta / s + smooth * theta  # smooth=1: keep, smooth=0: interpolate
        inv = torch.where(wavelen < L / self.high_freq_factor, theta, inv)
        inv = torch.where(wavelen > L / self.low_freq_factor, theta / s, inv)
        return lambda seq_len: (inv, 1.0)
