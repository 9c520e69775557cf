"""ViCLIP (InternVid, arXiv:2307.06942): the video-text model behind VBench's temporal_style and
overall_consistency (`ViClip-InternVid-10M-FLT.pth`, ViT-L/14, 8 frames). No library ships it, so
its space-time glue (the 3D patch embedding, the temporal positions, the joint token order) is
written here; the transformers are open_clip's (`open_clip.transformer.Transformer` with QuickGELU
for the vision tower, `TextTransformer` for the text tower: CLIP's residual blocks under the same
parameter names).

Read from VBench's copy of the model (Vchitect/VBench vbench/third_party/ViCLIP/viclip.py and
viclip_vision.py; viclip_text.py read in a fork of VBench, wangbei1/vbench, with the same layout):

- vision (`clip_joint_l14`): a Conv3d patch embedding with kernel (1, 14, 14) and no bias; per
  frame a class token (`class_embedding`) and the spatial `positional_embedding` [257, 1024]; a
  learned `temporal_positional_embedding` [1, 8, 1024] is added to the patch tokens only (for a
  single frame its mean over the 8 positions); the tokens of all frames are concatenated
  (space-major, time-minor order) after ONE class token, so the transformer (24 CLIP residual
  blocks, width 1024, 16 heads, QuickGELU) attends jointly over space and time; ln_pre before it,
  ln_post after it; the output is the class token times `proj` [1024, 768] (class-token pooling,
  no mean or attention pooling). Dropout and drop-path are inactive in eval.
- text (`clip_text_l14`): CLIP's causal text transformer, width 768, 12 heads, 12 layers, output
  768, context length 32 (`max_txt_l`), vocabulary 49,408; tokenised by CLIP's BPE with
  truncation (the 32nd id becomes end-of-text); features at the end-of-text token.
- checkpoint: `torch.load(path)["model"]` holds `vision_encoder.*`, `text_encoder.*` and `temp`,
  loaded strictly.
- scoring (vbench/temporal_style.py, overall_consistency.py; tasks/_viclip_task.py): both
  features L2-normalised; score = cos(video, text of the full prompt).

Not verified here (no weights available): that the released file holds exactly these keys and
shapes beyond what the loading code implies, and numerical agreement with the official model."""

from __future__ import annotations

import torch
from torch import nn

from harness.backbones._common import load_into
from harness.video import require

VICLIP_L14 = dict(patch=14, width=1024, layers=24, heads=16, out=768, frames=8, resolution=224)
VICLIP_TEXT = dict(width=768, layers=12, heads=12, out=768, context=32, vocab=49408)


def _oc():
    return require("open_clip.transformer")


class ViClipVision(nn.Module):
    def __init__(self, patch=14, width=1024, layers=24, heads=16, out=768, frames=8, resolution=224):
        super().__init__()
        scale = width**-0.5
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch) ** 2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, frames, width))
        self.ln_pre = nn.LayerNorm(width)
        oc = _oc()
        self.transformer = oc.Transformer(width, layers, heads, act_layer=oc.QuickGELU)  # batch first
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, T, H, W] -> [B, out]."""
        x = self.conv1(x)
        b, c, t, gh, gw = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(b * t, gh * gw, c)
        x = torch.cat([self.class_embedding.expand(b * t, 1, c), x], 1) + self.positional_embedding
        cls = x.reshape(b, t, -1, c)[:, 0, :1]  # identical for every frame
        patches = x[:, 1:].reshape(b, t, gh * gw, c).transpose(1, 2)  # [b, n, t, c]
        temporal = self.temporal_positional_embedding
        patches = patches + (temporal.mean(1) if t == 1 else temporal)
        x = torch.cat([cls, patches.reshape(b, gh * gw * t, c)], 1)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class ViClip(nn.Module):
    def __init__(self, vision: dict = VICLIP_L14, text: dict = VICLIP_TEXT):
        super().__init__()
        self.vision_encoder = ViClipVision(**vision)
        oc = _oc()
        self.text_encoder = oc.TextTransformer(
            context_length=text["context"],
            vocab_size=text["vocab"],
            width=text["width"],
            heads=text["heads"],
            layers=text["layers"],
            output_dim=text["out"],
            act_layer=oc.QuickGELU,
        )
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))

    def encode_vision(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: [B, T, 3, H, W] (VBench's layout) -> [B, out]."""
        return self.vision_encoder(frames.permute(0, 2, 1, 3, 4))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids)


def load_viclip(path, task: str, vision: dict = VICLIP_L14, text: dict = VICLIP_TEXT) -> ViClip:
    """`torch.load(path)["model"]` into ViClip, strictly (VBench's ViCLIP.__init__)."""
    return load_into(ViClip(vision, text), path, "", task)  # an unreadable file: UserError (read_checkpoint)
