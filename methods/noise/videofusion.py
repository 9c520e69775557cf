"""VideoFusion decomposed noise: a base noise shared by all frames plus a residual per frame."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.methods.noise._common import NoisePrior, constant_corr, gaussian


@register
@dataclass
class VideoFusion(NoisePrior):
    """VideoFusion — Luo et al. 2023, "VideoFusion: Decomposed Diffusion Models for High-Quality
    Video Generation" (arXiv:2303.08320): eps_i = sqrt(lam) · b + sqrt(1 - lam) · r_i with the base
    b and the residuals r_i ~ N(0, I). Corr(eps_i, eps_j) = lam; in distribution the same as PYoCo
    mixed with lam = a²/(1+a²). The formula is from the paper as summarised in the reference notes
    (no official code was available); lam = 0.5 is this project's default, not a published one.

    lam: the share of the base noise, in [0, 1]."""

    name = "videofusion"
    paper = "VideoFusion: Decomposed Diffusion Models for High-Quality Video Generation (arXiv:2303.08320)"
    ranges = {"lam": "[0, 1]"}  # checked by params.build before any model loads
    lam: float = field(default=0.5, metadata={"help": "base-noise share lambda in [0, 1]"})

    def __post_init__(self):
        if not 0 <= self.lam <= 1:
            raise ValueError("lam must be in [0, 1]")

    def sample(self, shape, generator, flows=None):
        base = gaussian(shape[1:], generator)
        return self.lam**0.5 * base + (1 - self.lam) ** 0.5 * gaussian(shape, generator)

    def expected_corr(self, frames):
        return constant_corr(frames, self.lam)
