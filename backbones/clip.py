"""OpenAI CLIP in plain PyTorch: the image tower (ViT), the text tower and the whole model
(image tower + text tower + logit scale), loading OpenAI / open_clip checkpoints (`ViT-B-32.pt`,
`ViT-L-14.pt`: TorchScript archives; parameter names are theirs, so they load with strict key
checks), and VBench's CLIP preprocessing. The tokenizer is in clip_tokenizer.py.

Text tower (clip/model.py `encode_text`): token + positional embedding, a causal transformer of
QuickGELU residual blocks, ln_final, the features at the end-of-text token (the largest id of
each row) times `text_projection`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.backbones._common import load_checked, load_state, normalise

CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


# -- the image tower and the residual blocks both towers use ------------------------------------
class _QuickGeluMlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU


class _Block(nn.Module):
    """CLIP's residual block; `causal` masks future tokens (the text transformer)."""

    def __init__(self, dim, heads, causal: bool = False):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads)
        self.ln_2, self.mlp = nn.LayerNorm(dim), _QuickGeluMlp(dim)
        self.causal = causal

    def forward(self, x):
        mask = None
        if self.causal:
            n = x.shape[0]
            mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class ClipTransformer(nn.Module):
    def __init__(self, dim, layers, heads, causal: bool = False):
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(dim, heads, causal) for _ in range(layers)])


class ClipVisual(nn.Module):
    """CLIP ViT image encoder (B/32: patch 32, width 768, 12 layers, 12 heads, output 512;
    L/14: patch 14, width 1024, 24 layers, 16 heads, output 768), input 224²."""

    def __init__(self, patch=32, width=768, layers=12, heads=12, out=512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn((224 // patch) ** 2 + 1, width) * width**-0.5)
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = ClipTransformer(width, layers, heads)
        self.proj = nn.Parameter(torch.randn(width, out) * width**-0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = self.transformer.resblocks(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


CLIP_B32 = dict(patch=32, width=768, layers=12, heads=12, out=512)
CLIP_L14 = dict(patch=14, width=1024, layers=24, heads=16, out=768)


# -- the text tower ----------------------------------------------------------------------------
class ClipText(nn.Module):
    """CLIP's text encoder. OpenAI ViT-B/32: width 512, 8 heads, 12 layers, output 512; ViT-L/14:
    width 768, 12 heads, 12 layers, output 768; ViCLIP-L/14: as L/14 with context 32. Parameter
    names are the checkpoints' (`token_embedding.weight`, `positional_embedding`,
    `transformer.resblocks.*`, `ln_final.*`, `text_projection`)."""

    def __init__(self, width=512, layers=12, heads=8, out=512, context=77, vocab=49408):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.transformer = ClipTransformer(width, layers, heads, causal=True)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, out) * width**-0.5)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer.resblocks(x.transpose(0, 1)).transpose(0, 1))
        return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection


# -- the whole CLIP model ------------------------------------------------------------------------
TEXT_B32 = dict(width=512, layers=12, heads=8, out=512)
TEXT_L14 = dict(width=768, layers=12, heads=12, out=768)
# ints OpenAI's TorchScript archives keep next to the weights (clip.build_model drops them)
_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


class Clip(nn.Module):
    """CLIP (OpenAI / open_clip layout: `visual.*`, the text tower's names at top level,
    `logit_scale`). forward(images, ids) -> (logits_per_image, logits_per_text) as clip.model.CLIP:
    exp(logit_scale) · cos(image, text)."""

    def __init__(self, visual: dict, text: dict):
        super().__init__()
        self.visual = ClipVisual(**visual)
        self.text = ClipText(**text)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # ln(100), OpenAI's released value

    def load_checkpoint(self, state: dict, task: str, path) -> "Clip":
        """Load an OpenAI/open_clip state dict (TorchScript ints dropped, `module.` stripped)."""
        state = {k.removeprefix("module."): v for k, v in state.items() if k not in _NON_WEIGHTS}
        mapped = {}
        for k, v in state.items():
            mapped[k if k.startswith(("visual.", "logit_scale")) else f"text.{k}"] = v
        return load_checked(self, mapped, task, path, "the CLIP layout")

    def encode_image(self, x):
        return self.visual(x)

    def encode_text(self, ids):
        return self.text(ids)

    def forward(self, images, ids):
        img = nn.functional.normalize(self.encode_image(images), dim=-1)
        txt = nn.functional.normalize(self.encode_text(ids), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()


def load_clip(path, visual: dict, text: dict, task: str) -> Clip:
    return Clip(visual, text).load_checkpoint(load_state(path), task, path)


# -- preprocessing (VBench utils.py) -----------------------------------------------------------
def clip_transform(frames: np.ndarray, n: int = 224, uint8: bool = False) -> torch.Tensor:
    """VBench's CLIP preprocessing: Resize(n, bicubic, antialias=False) on the short side, CenterCrop(n), /255, CLIP normalisation.
    uint8: VBench handed torchvision a uint8 tensor (decord's torch bridge), so the resized image
    is rounded and clamped to 0..255 as torchvision does for integer input."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    size = (n, max(n, int(w * n / h))) if h <= w else (max(n, int(h * n / w)), n)  # torchvision truncates
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
    x = x.round().clamp(0, 255) if uint8 else x
    top, left = int(round((x.shape[2] - n) / 2.0)), int(round((x.shape[3] - n) / 2.0))  # torchvision CenterCrop
    return normalise(x[:, :, top : top + n, left : left + n] / 255, CLIP_NORM)
