"""One noise frame repeated over time."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import register
from harness.methods.noise._common import NoisePrior, gaussian


@register
@dataclass
class Fixed(NoisePrior):
    """The same N(0, I) noise frame for every frame ("fixed noise", the baseline of "How I
    Warped Your Noise", arXiv:2504.03072): temporal correlation 1 everywhere; texture sticks to
    the screen when the content moves."""

    name = "fixed"
    paper = "How I Warped Your Noise: a Temporally-Correlated Noise Prior for Diffusion Models (arXiv:2504.03072)"

    def sample(self, shape, generator, flows=None):
        frame = gaussian(shape[1:], generator)
        return frame.expand(shape).clone()

    def expected_corr(self, frames):
        return torch.ones(frames, frames, dtype=torch.float64)
