"""Nearest-neighbour warp of the noise: keeps N(0, 1) values but duplicates and drops pixels."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.methods.noise._common import WarpPrior, sample_at


@register
@dataclass
class NearestWarp(WarpPrior):
    """Warp the previous frame's noise by nearest-neighbour look-up along the backward flow (a
    baseline of "How I Warped Your Noise", arXiv:2504.03072). Each value stays N(0, 1), but under
    zoom or sub-pixel motion pixels are duplicated (spatial correlation) or dropped.
    Disoccluded pixels get fresh noise."""

    name = "nearest_warp"
    paper = "How I Warped Your Noise: a Temporally-Correlated Noise Prior for Diffusion Models (arXiv:2504.03072)"

    def step(self, noise, flow, generator):
        return sample_at(noise, flow, "nearest", generator)
