"""Video ViT in the VideoMAE layout, in plain PyTorch (timm and torchvision cannot share the
harness's environment): tubelet patch embedding (Conv3d), a fixed sine-cosine position table (or
UMT's time-interpolated one), pre-norm blocks with VideoMAE's q/v-only attention biases, mean
pooling + `fc_norm`, and a linear `head`. Parameter names are those of the official checkpoints,
so they load with key checks:

- UMT ViT-L/16 fine-tuned on Kinetics-400 (`l16_ptk710_ftk710_ftk400_f16_res224.pth`), built by
  VBench's human_action.py as timm `vit_large_patch16_224(num_classes=400, all_frames=16,
  tubelet_size=1, use_mean_pooling=True)` from vbench/third_party/umt/models/modeling_finetune.py;
- VideoMAE-v2 ViT-g, hybrid pre-training, SSv2 fine-tuned (`vit_g_hybrid_pt_1200e_ssv2_ft.pth`),
  built by cd-fvd as `vit_giant_patch14_224(num_classes=174, all_frames=16, tubelet_size=2,
  use_mean_pooling=True)` and loaded strictly (cdfvd/third_party/VideoMAEv2/utils.py).

`to_transformers` maps the official key layout onto transformers' VideoMAEForVideoClassification,
the independent implementation the tests compare against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import UserError
from harness.backbones._common import Mlp, read_checkpoint  # fc1 -> exact GELU -> fc2, the same in both layouts


@dataclass(frozen=True)
class VideoViTConfig:
    patch: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_hidden: int = 3072
    num_classes: int = 400
    frames: int = 16
    tubelet: int = 2
    image: int = 224
    position: str = (
        "sinusoid"  # "sinusoid" (VideoMAE, fixed) or "umt" (8-frame table stretched to `frames`, a parameter)
    )


# vit_large_patch16_224 of UMT's modeling_finetune.py (mlp_ratio 4, qkv_bias, LayerNorm eps 1e-6)
UMT_L16_K400 = VideoViTConfig(
    patch=16, dim=1024, depth=24, heads=16, mlp_hidden=4096, num_classes=400, frames=16, tubelet=1, position="umt"
)
# vit_giant_patch14_224 of VideoMAEv2's videomaev2_finetune.py (mlp_ratio 48/11 -> 6144)
VIDEOMAE_V2_G_SSV2 = VideoViTConfig(
    patch=14, dim=1408, depth=40, heads=16, mlp_hidden=6144, num_classes=174, frames=16, tubelet=2
)
# a few-second configuration for plumbing runs (--allow-uncalibrated smoke runs and tests only)
TINY = VideoViTConfig(patch=16, dim=64, depth=2, heads=2, mlp_hidden=128, frames=16, tubelet=2, image=32)
TINY_UMT = VideoViTConfig(
    patch=16, dim=64, depth=2, heads=2, mlp_hidden=128, frames=16, tubelet=1, image=32, position="umt"
)


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """[1, n, dim]: position / 10000^(2·(j//2)/dim), sine on even j, cosine on odd j (computed in
    float64 as the official numpy code, then float32)."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(dim)
    table = pos / np.power(10000, 2 * (j // 2) / dim)
    table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32)[None]


def umt_table(frames: int, grid: int, dim: int, ckpt_frames: int = 8) -> torch.Tensor:
    """UMT's get_sinusoid_encoding_table(cur_frame=frames): the table of an 8-frame pre-training grid,
    linearly interpolated along time (align_corners=False) to `frames`; [1, frames·grid², dim]."""
    t = sinusoid_table(ckpt_frames * grid * grid, dim).reshape(ckpt_frames, grid, grid, dim)
    if frames == ckpt_frames:
        return t.reshape(1, -1, dim)
    t = t.permute(1, 2, 3, 0).reshape(-1, dim, ckpt_frames)
    t = F.interpolate(t, size=frames, mode="linear")
    return t.reshape(grid, grid, dim, frames).permute(3, 0, 1, 2).reshape(1, -1, dim)


class _PatchEmbed(nn.Module):
    def __init__(self, c: VideoViTConfig):
        super().__init__()
        k = (c.tubelet, c.patch, c.patch)
        self.proj = nn.Conv3d(3, c.dim, kernel_size=k, stride=k)


class _Attention(nn.Module):
    """qkv without bias plus separate q and v biases (k has none), as VideoMAE/BEiT."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, c: VideoViTConfig):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(c.dim, eps=1e-6), _Attention(c.dim, c.heads)
        self.norm2, self.mlp = nn.LayerNorm(c.dim, eps=1e-6), Mlp(c.dim, c.mlp_hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VideoViT(nn.Module):
    """Input [B, 3, T, H, W] with T = config.frames and H = W = config.image. `forward_features`
    is fc_norm(mean of the patch tokens) (the official `norm` is the identity under mean pooling,
    so it has no parameters); `forward` adds the head (logits)."""

    def __init__(self, c: VideoViTConfig):
        super().__init__()
        self.config = c
        grid = c.image // c.patch
        self.patch_embed = _PatchEmbed(c)
        if c.position == "umt":  # a parameter in UMT (n_position != 1568 makes it nn.Parameter)
            self.pos_embed = nn.Parameter(umt_table(c.frames // c.tubelet, grid, c.dim))
        else:  # a plain tensor in VideoMAE: not part of the checkpoint
            self.register_buffer(
                "pos_embed", sinusoid_table(c.frames // c.tubelet * grid * grid, c.dim), persistent=False
            )
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.depth))
        self.fc_norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Linear(c.dim, c.num_classes)

    def forward_features(self, x):
        c = self.config
        if tuple(x.shape[2:]) != (c.frames, c.image, c.image):
            raise ValueError(f"video ViT expects [B, 3, {c.frames}, {c.image}, {c.image}], got {list(x.shape)}")
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.fc_norm(x.mean(1))

    def forward(self, x):
        return self.head(self.forward_features(x))


def checkpoint_state(path) -> dict:
    """The state dict of an official checkpoint: the file itself, or its 'model' / 'module' entry
    (as cd-fvd's load_videomae_model unwraps it)."""
    state = read_checkpoint(path)
    for key in ("model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


def load_video_vit(net: VideoViT, path, task: str, optional: tuple[str, ...] = ()) -> dict:
    """Load an official checkpoint into `net`: every parameter must be present except the names in
    `optional` (UMT's pos_embed: VBench loads with strict=False, so a checkpoint without it keeps the
    interpolated table). Unexpected keys are refused. Returns {"missing_optional": [...]}."""
    state = checkpoint_state(path)
    missing, unexpected = net.load_state_dict(state, strict=False)
    bad = [k for k in missing if k not in optional]
    if bad or unexpected:
        raise UserError(
            f"{task}: {path} does not match the expected video ViT layout "
            f"(missing {bad[:3]}, unexpected {unexpected[:3]})"
        )
    return {"missing_optional": sorted(missing)}


def to_transformers(state: dict, prefix: str = "videomae.") -> dict:
    """Official VideoMAE/UMT keys -> transformers VideoMAEForVideoClassification keys (the position
    table is not a transformers parameter and is dropped; `fc_norm`/`head` -> `fc_norm`/`classifier`)."""
    out = {}
    for k, v in state.items():
        if k == "pos_embed":
            continue
        if k.startswith("patch_embed.proj."):
            out[prefix + "embeddings.patch_embeddings.projection." + k.split(".")[-1]] = v
        elif k.startswith("blocks."):
            _, i, *rest = k.split(".")
            layer, name = f"{prefix}encoder.layer.{i}.", ".".join(rest)
            if name == "attn.qkv.weight":
                q, kk, vv = v.chunk(3)
                out[layer + "attention.attention.query.weight"] = q
                out[layer + "attention.attention.key.weight"] = kk
                out[layer + "attention.attention.value.weight"] = vv
            elif name in ("attn.q_bias", "attn.v_bias"):
                out[layer + "attention.attention." + name.split(".")[1]] = v
            else:
                target = {
                    "attn.proj": "attention.output.dense",
                    "norm1": "layernorm_before",
                    "norm2": "layernorm_after",
                    "mlp.fc1": "intermediate.dense",
                    "mlp.fc2": "output.dense",
                }
                mod, param = name.rsplit(".", 1)
                out[layer + target[mod] + "." + param] = v
        elif k.startswith("fc_norm."):
            out[k] = v
        elif k.startswith("head."):
            out["classifier." + k.split(".")[-1]] = v
        else:
            raise KeyError(f"unknown official key {k}")
    return out


def frames_to_unit(frames: np.ndarray, num_frames: int, size: int) -> torch.Tensor:
    """cd-fvd's VideoMAE preprocessing: the first `num_frames` frames, /255 in [0, 1], resized to
    size x size (bilinear, align_corners=False, no antialias, no crop), no mean/std normalisation.
    [3, T, size, size]."""
    x = torch.from_numpy(np.ascontiguousarray(frames[:num_frames])).float().permute(0, 3, 1, 2) / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.permute(1, 0, 2, 3)
