"""Bilinear interpolation warp of the noise: the naive baseline of noise warping."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.methods.noise._common import WarpPrior, sample_at


@register
@dataclass
class BilinearWarp(WarpPrior):
    """Warp the previous frame's noise with bilinear interpolation along the backward flow (the
    interpolation baseline of "How I Warped Your Noise", Chang et al., arXiv:2504.03072).
    Interpolation averages neighbours, so the variance drops (a half-pixel shift: 0.5) and the
    noise becomes spatially correlated — the dissipation the paper shows. Disoccluded pixels get
    fresh noise."""

    name = "bilinear_warp"
    paper = "How I Warped Your Noise: a Temporally-Correlated Noise Prior for Diffusion Models (arXiv:2504.03072)"

    def step(self, noise, flow, generator):
        return sample_at(noise, flow, "bilinear", generator)
