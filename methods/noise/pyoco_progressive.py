"""PYoCo progressive noise: an AR(1) chain over frames."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.noise._common import NoisePrior, ar1_corr, gaussian


@register
@dataclass
class PyocoProgressive(NoisePrior):
    """PYoCo progressive noise — Ge et al. 2023 (arXiv:2305.10474):
    eps_0 ~ N(0, I), eps_i = a/sqrt(1+a²) · eps_{i-1} + eps_ind_i, eps_ind_i ~ N(0, 1/(1+a²) I).
    An AR(1) process with N(0, I) marginals and Corr(eps_i, eps_j) = (a/sqrt(1+a²))^|i-j|.

    alpha: a (2, the value a third-party reimplementation attributes to the paper; unverified)."""

    name = "pyoco_progressive"
    paper = "Preserve Your Own Correlation: A Noise Prior for Video Diffusion Models (arXiv:2305.10474)"
    ranges = {"alpha": "[0, inf)"}  # checked by params.build before any model loads
    alpha: float = field(default=2.0, metadata={"help": "a; lag-1 correlation a/sqrt(1+a²)"})

    def __post_init__(self):
        if self.alpha < 0:
            raise ValueError("alpha must be non-negative")

    def sample(self, shape, generator, flows=None):
        rho = self.alpha / (1 + self.alpha**2) ** 0.5
        frames = [gaussian(shape[1:], generator)]
        for _ in range(1, shape[0]):
            frames.append(rho * frames[-1] + gaussian(shape[1:], generator, (1 / (1 + self.alpha**2)) ** 0.5))
        return torch.stack(frames)

    def expected_corr(self, frames):
        return ar1_corr(frames, self.alpha / (1 + self.alpha**2) ** 0.5)
