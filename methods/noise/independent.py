"""Independent Gaussian noise per frame: the standard video diffusion initialisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import register
from harness.methods.noise._common import NoisePrior, gaussian


@register
@dataclass
class Independent(NoisePrior):
    """Independent N(0, I) noise for every frame and pixel (the baseline of every noise-prior
    paper, e.g. the "random" rows of PYoCo, arXiv:2305.10474). Temporal correlation: identity."""

    name = "independent"
    paper = "Denoising Diffusion Probabilistic Models (arXiv:2006.11239)"

    def sample(self, shape, generator, flows=None):
        return gaussian(shape, generator)

    def expected_corr(self, frames):
        return torch.eye(frames, dtype=torch.float64)
