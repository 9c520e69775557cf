"""PYoCo mixed noise: one shared component plus an independent one per frame."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.methods.noise._common import NoisePrior, constant_corr, gaussian


@register
@dataclass
class PyocoMixed(NoisePrior):
    """PYoCo mixed noise — Ge et al. 2023, "Preserve Your Own Correlation: A Noise Prior for Video
    Diffusion Models" (arXiv:2305.10474), Eq. for the mixed model:
    eps_i = eps_shared + eps_ind_i, eps_shared ~ N(0, a²/(1+a²) I), eps_ind_i ~ N(0, 1/(1+a²) I).
    Marginals N(0, I); Corr(eps_i, eps_j) = a²/(1+a²) for i != j.

    alpha: a (1, the value a third-party reimplementation attributes to the paper; unverified).
    At a = 1 this is, in distribution, VideoFusion's noise with lam = 0.5 (both defaults): the two
    rows of the reference records agree on every statistic by construction, not by coincidence."""

    name = "pyoco_mixed"
    paper = "Preserve Your Own Correlation: A Noise Prior for Video Diffusion Models (arXiv:2305.10474)"
    ranges = {"alpha": "[0, inf)"}  # checked by params.build before any model loads
    alpha: float = field(default=1.0, metadata={"help": "shared/independent ratio a; corr = a²/(1+a²)"})

    def __post_init__(self):
        if self.alpha < 0:
            raise ValueError("alpha must be non-negative")

    def sample(self, shape, generator, flows=None):
        a2 = self.alpha**2
        shared = gaussian(shape[1:], generator, (a2 / (1 + a2)) ** 0.5)
        return shared + gaussian(shape, generator, (1 / (1 + a2)) ** 0.5)

    def expected_corr(self, frames):
        return constant_corr(frames, self.alpha**2 / (1 + self.alpha**2))
