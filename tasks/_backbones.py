"""Image backbones of the VBench consistency and quality dimensions, in plain PyTorch (torchvision,
timm and open_clip cannot share the harness's environment). Parameter names follow the released
checkpoints, so they load with strict key checks: DINO ViT-B/16 (facebookresearch/dino
`dino_vitbase16_pretrain.pth`) and the visual tower of OpenAI CLIP (`ViT-B-32.pt`, `ViT-L-14.pt`,
TorchScript archives whose `visual.*` weights are used)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import UserError
from harness.interfaces import Metric
from harness.tasks._vbench import VideoTask, consistency_scores
from harness.tasks._weights import locate

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


# -- DINO ViT ----------------------------------------------------------------------------------
class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, 4 * dim)

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


# -- CLIP visual tower -------------------------------------------------------------------------
class _ClipMlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU


class _ClipBlock(nn.Module):
    """CLIP's residual block; `causal` masks future tokens (the text transformer)."""

    def __init__(self, dim, heads, causal: bool = False):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads)
        self.ln_2, self.mlp = nn.LayerNorm(dim), _ClipMlp(dim)
        self.causal = causal

    def forward(self, x):
        mask = None
        if self.causal:
            n = x.shape[0]
            mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _ClipTransformer(nn.Module):
    def __init__(self, dim, layers, heads, causal: bool = False):
        super().__init__()
        self.resblocks = nn.Sequential(*[_ClipBlock(dim, heads, causal) for _ in range(layers)])


class ClipVisual(nn.Module):
    """CLIP ViT image encoder (B/32: patch 32, width 768, 12 layers, 12 heads, output 512;
    L/14: patch 14, width 1024, 24 layers, 16 heads, output 768), input 224²."""

    def __init__(self, patch=32, width=768, layers=12, heads=12, out=512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn((224 // patch) ** 2 + 1, width) * width**-0.5)
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = _ClipTransformer(width, layers, heads)
        self.proj = nn.Parameter(torch.randn(width, out) * width**-0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = self.transformer.resblocks(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


CLIP_B32 = dict(patch=32, width=768, layers=12, heads=12, out=512)
CLIP_L14 = dict(patch=14, width=1024, layers=24, heads=16, out=768)


def load_state(path, prefix: str = "") -> dict:
    """A state dict from a plain checkpoint (weights only) or a TorchScript archive (OpenAI CLIP)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))  # wrapped checkpoints (ViCLIP: "model")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_checked(net: nn.Module, state: dict, task: str, path, layout: str = "the expected layout") -> nn.Module:
    """load_state_dict that names the file and the first mismatching keys instead of a traceback."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{task}: {path} does not match {layout} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net


def load_into(net: nn.Module, path, prefix: str, task: str) -> nn.Module:
    return load_checked(net, load_state(path, prefix), task, path)


# -- preprocessing (VBench utils.py) -----------------------------------------------------------
def _normalise(x, stats):
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
    return (x - mean) / std


def dino_transform(frames: np.ndarray, n: int = 224) -> torch.Tensor:
    """Resize(n) on the short side (no crop), /255, ImageNet normalisation."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    size = (n, max(1, int(w * n / h))) if h <= w else (max(1, int(h * n / w)), n)  # torchvision truncates
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return _normalise(x / 255, IMAGENET)


def clip_transform(frames: np.ndarray, n: int = 224, uint8: bool = False) -> torch.Tensor:
    """Resize(n, bicubic, antialias=False) on the short side, CenterCrop(n), /255, CLIP normalisation.
    uint8: VBench handed torchvision a uint8 tensor (decord's torch bridge), so the resized image
    is rounded and clamped to 0..255 as torchvision does for integer input."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    size = (n, max(n, int(w * n / h))) if h <= w else (max(n, int(h * n / w)), n)  # torchvision truncates
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
    x = x.round().clamp(0, 255) if uint8 else x
    top, left = int(round((x.shape[2] - n) / 2.0)), int(round((x.shape[3] - n) / 2.0))  # torchvision CenterCrop
    return _normalise(x[:, :, top : top + n, left : left + n] / 255, CLIP_NORM)


@dataclass
class BackboneTask(VideoTask):
    """A VBench dimension computed from a backbone's per-frame features (weights from the local
    weights folder; random init only with allow_uncalibrated)."""

    weights_dir: str = field(default="", metadata={"help": "folder with the weights (default $HARNESS_VIDEO_WEIGHTS)"})
    weights_sha256: str = field(default="", metadata={"help": "expected sha256 of the weights file"})
    allow_uncalibrated: bool = field(default=False, metadata={"help": "random-init backbone when weights are missing"})
    num_frames: int | None = field(default=None, metadata={"help": "frames sampled 'middle'; None = all (VBench)"})
    batch_size: int = 16
    max_videos: int = field(default=0, metadata={"help": "score only the first N videos (0 = all; quick checks)"})

    def build(self):
        """Returns (net, facts); subclasses name their file and layout."""
        raise TypeError(f"{type(self).__name__} must define build()")  # abstract: each subclass overrides it

    def backbone(self, files: list[tuple[str, str]], make):
        """files: [(filename, where to get it)]; make(paths or None) -> module."""
        paths, facts = [], {"calibrated": True, "weights": []}
        for i, (filename, where) in enumerate(files):
            path, f = locate(
                self.name,
                self.weights_dir,
                filename,
                self.weights_sha256 if i == 0 else "",
                self.allow_uncalibrated,
                where,
            )
            paths.append(path)
            facts["weights"].append({"file": f["weights_file"], "sha256": f["weights_sha256"]})
            facts["calibrated"] &= f["calibrated"]
        torch.manual_seed(0)
        return make(paths if all(p is not None for p in paths) else None).eval(), facts

    def run(self, ctx):
        self._net, facts = self.build()
        self.calibrated = facts["calibrated"]
        result = super().run(ctx)
        result.details.update(facts)
        return result

    def embed(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return (
                torch.cat([self._net(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])
                .double()
                .numpy()
            )


class ConsistencyTask(BackboneTask):
    """subject_/background_consistency: the frame scores of `consistency_scores` on the backbone's
    features; the dimension is frame-weighted (VBench sums frame scores over all videos and divides by
    their count), `per_video` is the mean of the per-video means."""

    def transform(self, frames: np.ndarray) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define transform()")  # abstract: each subclass overrides it

    def score(self, ref, frames):
        s = consistency_scores(self.embed(self.transform(frames)))
        return {"value": float(sum(s) / len(s)), "frame_scores": [round(float(v), 6) for v in s]}

    def aggregate(self, rows):
        scores = [s for r in rows for s in r.get("frame_scores", [])]
        return {
            self.main_metric: Metric.mean(scores, "higher", "cosine"),
            "per_video": super().aggregate(rows)[self.main_metric],
        }
