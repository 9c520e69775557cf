"""DINO ViT (facebookresearch/dino) in plain PyTorch. Parameter names follow the released
checkpoint (`dino_vitbase16_pretrain.pth`), so it loads with strict key checks
(`_common.load_into`); `dino_transform` is VBench's preprocessing for it (utils.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.backbones._common import IMAGENET, Mlp, normalise


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class DinoViT(nn.Module):
    """DINO ViT (B/16: dim 768, depth 12, heads 12); returns the normalised-layer CLS token. The
    position embedding is interpolated (bicubic) for inputs other than 224², as DINO does."""

    def __init__(self, patch=16, dim=768, depth=12, heads=12):
        super().__init__()
        self.patch = patch
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (224 // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        b, _, h, w = x.shape
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        gh, gw, g0 = h // self.patch, w // self.patch, int((self.pos_embed.shape[1] - 1) ** 0.5)
        pos = self.pos_embed[:, 1:]
        if (gh, gw) != (g0, g0):
            pos = (
                F.interpolate(
                    pos.reshape(1, g0, g0, -1).permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic", align_corners=False
                )
                .permute(0, 2, 3, 1)
                .reshape(1, gh * gw, -1)
            )
        x = torch.cat([self.cls_token.expand(b, -1, -1) + self.pos_embed[:, :1], x + pos], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def dino_transform(frames: np.ndarray, n: int = 224) -> torch.Tensor:
    """VBench's DINO preprocessing: Resize(n) on the short side (no crop), /255, ImageNet normalisation."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    size = (n, max(1, int(w * n / h))) if h <= w else (max(1, int(h * n / w)), n)  # torchvision truncates
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return normalise(x / 255, IMAGENET)
