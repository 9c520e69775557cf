"""MUSIQ (Ke et al. 2021, arXiv:2108.05997) as pyiqa's musiq_arch.py builds it, in plain PyTorch.
pyiqa itself (0.1.16) is not a dependency: it hard-requires bitsandbytes, facexlib (numba,
llvmlite), tensorboard, pre-commit, openai-clip, yapf, pytest, ruff, datasets and accelerate, and
importing its MUSIQ runs pyiqa/__init__.py, which imports the whole toolbox; pip's resolution of
it beside the harness's pins did not finish within 15 minutes on the 2-core machine this was
written on. Parameter names follow pyiqa's checkpoints (`musiq_spaq_ckpt-358bb6af.pth`, the file
VBench's imaging_quality loads):

- input in [0, 1] -> [-1, 1]; three scales: the image resized (bicubic, aspect kept, no antialias)
  so its longer side is 224 and 384, each cut into 32x32 patches with TF "SAME" zero padding and
  padded with masked zero patches to ceil(L/32)² tokens, plus the original resolution (all patches,
  no padding); each patch carries a hashed spatial position (10x10 grid, nearest-neighbour hash) and
  its scale index;
- per patch a ResNet stem: weight-standardised 7x7/2 conv (unbiased std, + 1e-5), GroupNorm(32),
  ReLU, SAME-padded 3x3/2 max pool, one bottleneck 64 -> 256 (weight-standardised convs, GroupNorm
  eps 1e-4, projection shortcut); the 8x8x256 map flattened channels-last into a linear to 384;
- a CLS token and 14 pre-norm blocks (384 wide, 6 heads, MLP 1152, LayerNorm eps 1e-6) whose
  attention sets logits between padded tokens to -1000 (not -inf, as pyiqa); final LayerNorm; a
  linear head on the CLS token (SPAQ: one output, the 0-100 score; pyiqa's dist_to_mos is the
  identity for one output)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from harness.backbones._common import Mlp

PATCH, GRID, SCALES = 32, 10, (224, 384)


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding (the extra pixel on the right/bottom)."""
    h, w = x.shape[-2:]
    pr = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pc = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, (pc // 2, pc - pc // 2, pr // 2, pr - pr // 2))


class StdConv(nn.Conv2d):
    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        w = w / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(same_pad(x, self.kernel_size[0], self.stride[0]), w, self.bias, self.stride)


class Bottleneck(nn.Module):
    def __init__(self, inp, out):
        super().__init__()
        self.conv1, self.gn1 = StdConv(inp, inp, 1, 1, bias=False), nn.GroupNorm(32, inp, eps=1e-4)
        self.conv2, self.gn2 = StdConv(inp, inp, 3, 1, bias=False), nn.GroupNorm(32, inp, eps=1e-4)
        self.conv3, self.gn3 = StdConv(inp, out, 1, 1, bias=False), nn.GroupNorm(32, out, eps=1e-4)
        self.conv_proj, self.gn_proj = StdConv(inp, out, 1, 1, bias=False), nn.GroupNorm(32, out, eps=1e-4)

    def forward(self, x):
        identity = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(self.gn3(self.conv3(x)) + identity)


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, mask):
        b, n, d = x.shape
        q, k, v = (m(x).reshape(b, n, self.heads, -1).transpose(1, 2) for m in (self.query, self.key, self.value))
        attn = q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5
        pair = mask[:, None, :, None] & mask[:, None, None, :]
        attn = attn.masked_fill(~pair, -1e3).softmax(-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim, mlp, heads):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim, eps=1e-6), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, mlp)

    def forward(self, x, mask):
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _PositionEmbs(nn.Module):
    def __init__(self, grid, dim):
        super().__init__()
        self.position_emb = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)


class _ScaleEmbs(nn.Module):
    def __init__(self, scales, dim):
        super().__init__()
        self.scale_emb = nn.Parameter(torch.randn(scales, dim) * 0.02)


class _Encoder(nn.Module):
    def __init__(self, dim, mlp, heads, layers, scales, grid):
        super().__init__()
        self.posembed_input, self.scaleembed_input = _PositionEmbs(grid, dim), _ScaleEmbs(scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": _Block(dim, mlp, heads) for i in range(layers)})

    def forward(self, x, spatial, scale, mask):
        x = x + self.posembed_input.position_emb[0][spatial] + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
        for blk in self.transformer.values():
            x = blk(x, mask)
        return self.encoder_norm(x)


def hashed_positions(count_h: int, count_w: int, grid: int = GRID) -> torch.Tensor:
    """Row-major patch positions hashed onto a grid x grid table by nearest-neighbour scaling
    (F.interpolate 'nearest' of 0..grid-1 to the patch counts)."""

    def axis(n):
        return F.interpolate(torch.arange(grid).float()[None, None], size=n, mode="nearest")[0, 0].long()

    return (axis(count_h)[:, None] * grid + axis(count_w)[None, :]).reshape(-1)


def scale_tokens(image: torch.Tensor, scale_id: int, max_len: int | None):
    """(patches [N, 3·32·32], spatial [N], scale [N], mask [N]) of one image [3, H, W] at one scale."""
    h, w = image.shape[-2:]
    p = F.unfold(same_pad(image[None], PATCH, PATCH), PATCH, stride=PATCH)[0].T  # [N, 3·32·32], (c, y, x)
    spatial = hashed_positions(math.ceil(h / PATCH), math.ceil(w / PATCH))
    mask = torch.ones(len(p), dtype=torch.bool)
    if max_len is not None:  # pad with zero patches (position 0, scale 0, masked), or cut
        extra = max(0, max_len - len(p))
        p = torch.cat([p, p.new_zeros(extra, p.shape[1])])[:max_len]
        spatial = torch.cat([spatial, spatial.new_zeros(extra)])[:max_len]
        mask = torch.cat([mask, mask.new_zeros(extra)])[:max_len]
        scale = torch.where(mask, scale_id, 0)
    else:
        scale = torch.full_like(spatial, scale_id)
    return p, spatial, scale, mask


def multiscale_tokens(image: torch.Tensor, scales=SCALES):
    """pyiqa get_multiscale_patches(longer_side_lengths=[224, 384], max_seq_len_from_original_res=-1)
    of one image [3, H, W] in [-1, 1]."""
    h, w = image.shape[-2:]
    parts = []
    for i, longer in enumerate(sorted(scales)):
        r = longer / max(h, w)
        resized = F.interpolate(image[None], size=(round(h * r), round(w * r)), mode="bicubic", align_corners=False)[0]
        parts.append(scale_tokens(resized, i, math.ceil(longer / PATCH) ** 2))
    parts.append(scale_tokens(image, len(scales), None))
    return [torch.cat(x) for x in zip(*parts)]


class MUSIQ(nn.Module):
    """score(images [B, 3, H, W] in [0, 1]) -> [B] (SPAQ: 0-100)."""

    def __init__(self, dim=384, mlp=1152, heads=6, layers=14):
        super().__init__()
        self.conv_root = StdConv(3, 64, 7, 2, bias=False)
        self.gn_root = nn.GroupNorm(32, 64, eps=1e-6)
        self.block1 = Bottleneck(64, 256)
        self.embedding = nn.Linear(256 * (PATCH // 4) ** 2, dim)
        self.transformer_encoder = _Encoder(dim, mlp, heads, layers, len(SCALES) + 1, GRID)
        self.head = nn.Linear(dim, 1)  # SPAQ/KonIQ heads: one score (AVA's 10-bin softmax is not built)

    def tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """[N, 3·32·32] patches -> [N, dim] embeddings through the ResNet stem."""
        x = patches.reshape(-1, 3, PATCH, PATCH)
        x = F.relu(self.gn_root(self.conv_root(x)))
        x = F.max_pool2d(same_pad(x, 3, 2), 3, 2)
        x = self.block1(x)
        return self.embedding(x.permute(0, 2, 3, 1).reshape(len(x), -1))  # channels last, as TF

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for img in images:
            p, spatial, scale, mask = multiscale_tokens(img * 2 - 1)
            x = self.transformer_encoder(self.tokens(p)[None], spatial[None], scale[None], mask[None])
            out.append(self.head(x[:, 0])[0, 0])
        return torch.stack(out)
