"""DINO ViT-B/16 (facebookresearch/dino) from timm: timm's VisionTransformer is the architecture of
DINO's ViT under the same parameter names (`cls_token`, `pos_embed`, `patch_embed.proj.*`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`, `norm.*`; qkv bias, LayerNorm eps
1e-6), so `dino_vitbase16_pretrain.pth` loads into it with strict key checks (`_common.load_into`).
The output is the final-norm CLS token (DINO's backbone has no head). Only the position-embedding
interpolation for inputs other than 224² is DINO's own, not timm's (timm resamples by target size
with an antialiased kernel; DINO's `interpolate_pos_encoding` scales by (grid + 0.1)/14, bicubic,
whenever the input is not square): VBench's subject_consistency resizes the short side to 224
without cropping, so non-square videos take that path. `dino_transform` is VBench's preprocessing."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from harness.backbones._common import IMAGENET, normalise
from harness.video import require

VIT_B16 = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)


def dino_pos_embed(pos: torch.Tensor, h: int, w: int, patch: int) -> torch.Tensor:
    """DINO's interpolate_pos_encoding for an input of h x w pixels: unchanged when the grid has as
    many patches as the table and the input is square; else the patch positions resized by
    bicubic interpolation with scale factors ((h//patch + 0.1)/n, (w//patch + 0.1)/n)."""
    n_tab = pos.shape[1] - 1
    gh, gw = h // patch, w // patch
    if gh * gw == n_tab and h == w:
        return pos
    n = int(math.sqrt(n_tab))
    grid = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / n, (gw + 0.1) / n), mode="bicubic")
    assert grid.shape[-2:] == (gh, gw)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)


def dino_vit(**arch):
    """timm's VisionTransformer with DINO's position interpolation (B/16 unless `arch` overrides
    patch_size, embed_dim, depth, num_heads), no head, random init, eval mode."""
    vt = require("timm.models.vision_transformer")

    class DinoViT(vt.VisionTransformer):
        def forward_features(self, x, *args, **kw):
            self._hw = x.shape[-2:]  # DINO's interpolation depends on the input's pixel size
            p = self.patch_embed.patch_size[0]  # DINO's stride-16 convolution drops the remainder; timm refuses it
            return super().forward_features(x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p], *args, **kw)

        def _pos_embed(self, x):  # x: [B, gh, gw, C] (dynamic_img_size)
            b, _, _, c = x.shape
            x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], 1)
            return self.pos_drop(x + dino_pos_embed(self.pos_embed, *self._hw, self.patch_embed.patch_size[0]))

    return DinoViT(**{**VIT_B16, **arch}, num_classes=0, dynamic_img_size=True).eval()


def dino_transform(frames: np.ndarray, n: int = 224) -> torch.Tensor:
    """VBench's DINO preprocessing: Resize(n) on the short side (no crop), /255, ImageNet normalisation."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    size = (n, max(1, int(w * n / h))) if h <= w else (max(1, int(h * n / w)), n)  # torchvision truncates
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return normalise(x / 255, IMAGENET)
