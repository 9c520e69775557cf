"""∫-noise warping: noise as the integral of white noise over each pixel, carried along the flow."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.noise._common import WarpPrior, gaussian, pixel_grid

# The 3x3 vertex grid of a pixel (offsets from its centre) and its 8 triangles around the centre.
_RING = [(-0.5, -0.5), (0.0, -0.5), (0.5, -0.5), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5), (-0.5, 0.5), (-0.5, 0.0)]


def conditional_upsample(x: torch.Tensor, s: int, generator) -> torch.Tensor:
    """[C, H, W] -> [C, H*s, W*s]: each pixel X splits into s² unit-variance sub-pixels
    U = X/s + (Z - mean(Z)), Z ~ N(0, I); the sub-pixels are uncorrelated and sum to s·X."""
    c, h, w = x.shape
    z = gaussian((c, h, s, w, s), generator)
    u = x[:, :, None, :, None] / s + (z - z.mean(dim=(2, 4), keepdim=True))
    return u.reshape(c, h * s, w * s)


def _interp_flow(flow: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of a pixel-centre flow field at arbitrary points (edge-clamped); exact
    for the affine flows of the task's synthetic motions."""
    h, w, _ = flow.shape
    grid = torch.stack([(xs + 0.5) / w * 2 - 1, (ys + 0.5) / h * 2 - 1], -1)[None]
    return torch.nn.functional.grid_sample(
        flow.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0].permute(1, 2, 0)


def rasterize(flow: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map each target pixel's 8 triangles into the source frame and assign every source sub-pixel
    (resolution s) whose centre lies in a triangle to that triangle's pixel. Returns
    (sub-pixel flat index, target pixel flat index) pairs; each sub-pixel appears at most once."""
    h, w, _ = flow.shape
    cx, cy = pixel_grid(h, w)
    offs = [(0.0, 0.0)] + _RING  # vertex 0 = the centre
    vx = torch.stack([cx + dx for dx, _ in offs], -1)  # [H, W, 9]
    vy = torch.stack([cy + dy for _, dy in offs], -1)
    f = _interp_flow(flow, vx.reshape(h, -1), vy.reshape(h, -1)).reshape(h, w, 9, 2)
    sx, sy = (vx + f[..., 0]) * s + (s - 1) / 2, (vy + f[..., 1]) * s + (s - 1) / 2  # sub-pixel units
    a = [0] * 8
    b = list(range(1, 9))
    c = list(range(2, 9)) + [1]
    tri_x = torch.stack([sx[..., a], sx[..., b], sx[..., c]], -1).reshape(-1, 3)  # [P*8, 3]
    tri_y = torch.stack([sy[..., a], sy[..., b], sy[..., c]], -1).reshape(-1, 3)
    owner = torch.arange(h * w).repeat_interleave(8)
    u0, v0 = tri_x.min(1).values.ceil(), tri_y.min(1).values.ceil()
    ku = int((tri_x.max(1).values.floor() - u0).max().clamp_min(0)) + 1
    kv = int((tri_y.max(1).values.floor() - v0).max().clamp_min(0)) + 1
    du, dv = torch.meshgrid(torch.arange(kv, dtype=torch.float32), torch.arange(ku, dtype=torch.float32), indexing="ij")
    px, py = u0[:, None] + dv.flatten()[None], v0[:, None] + du.flatten()[None]  # [T, K]

    def edge(i, j):
        return (tri_x[:, j : j + 1] - tri_x[:, i : i + 1]) * (py - tri_y[:, i : i + 1]) - (
            tri_y[:, j : j + 1] - tri_y[:, i : i + 1]
        ) * (px - tri_x[:, i : i + 1])

    area = (
        (tri_x[:, 1] - tri_x[:, 0]) * (tri_y[:, 2] - tri_y[:, 0])
        - (tri_y[:, 1] - tri_y[:, 0]) * (tri_x[:, 2] - tri_x[:, 0])
    )[:, None]
    sign = torch.sign(area)
    inside = (edge(0, 1) * sign >= 0) & (edge(1, 2) * sign >= 0) & (edge(2, 0) * sign >= 0) & (area != 0)
    inside &= (px >= 0) & (px < w * s) & (py >= 0) & (py < h * s)
    sub = (py * (w * s) + px).long()[inside]
    tgt = owner[:, None].expand_as(px)[inside]
    # a sub-pixel centre on a shared edge lies in two triangles: keep the first, so they partition
    order = torch.argsort(sub * (h * w) + tgt)
    sub, tgt = sub[order], tgt[order]
    first = torch.ones_like(sub, dtype=torch.bool)
    first[1:] = sub[1:] != sub[:-1]
    return sub[first], tgt[first]


@register
@dataclass
class IntegralNoise(WarpPrior):
    """∫-noise warping — Chang et al., "How I Warped Your Noise: a Temporally-Correlated Noise
    Prior for Diffusion Models" (ICLR 2024; arXiv:2504.03072). A pixel is the normalised integral
    of white noise over its area. Each step: conditionally upsample the previous frame by s
    (U = X/s + (Z - mean Z) per pixel), split each target pixel into 8 triangles on its 3x3 vertex
    grid, map the vertices by the backward flow, and set the pixel to (sum of the covered
    sub-pixels)/sqrt(count); disoccluded pixels get fresh N(0, 1). The official code rasterises with
    nvdiffrast on the GPU; this is the same rule in plain PyTorch (a sub-pixel belongs to the
    triangle containing its centre). Marginals stay N(0, 1) and pixels stay uncorrelated.

    upsample: s, sub-pixels per side (the notebook's s = 2^level; 8 here by default)."""

    name = "integral_noise"
    paper = "How I Warped Your Noise: a Temporally-Correlated Noise Prior for Diffusion Models (arXiv:2504.03072)"
    smoke_args = {"upsample": "4"}
    ranges = {"upsample": "[1, inf)"}  # checked by params.build before any model loads
    upsample: int = field(default=8, metadata={"help": "sub-pixels per side s"})

    def __post_init__(self):
        if self.upsample < 1:
            raise ValueError("upsample must be at least 1")

    def step(self, noise, flow, generator):
        c, h, w = noise.shape
        u = conditional_upsample(noise, self.upsample, generator).reshape(c, -1)
        sub, tgt = rasterize(flow, self.upsample)
        total = torch.zeros(c, h * w).index_add_(1, tgt, u[:, sub])
        count = torch.zeros(h * w).index_add_(0, tgt, torch.ones_like(tgt, dtype=torch.float32))
        out = total / count.clamp_min(1).sqrt()
        fresh = gaussian((c, h * w), generator)
        return torch.where(count > 0, out, fresh).reshape(c, h, w)
