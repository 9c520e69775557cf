"""The VBench task shared by temporal_style and overall_consistency: ViCLIP (backbones/viclip.py,
where the architecture and what is unverified are described) scores the cosine between a video and
the text of its full prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from harness.backbones.clip import clip_transform, tokenize
from harness.backbones.viclip import ViClip, load_viclip
from harness.errors import UserError
from harness.tasks._backbone_tasks import BackboneTask
from harness.tasks._weights import file_of


@dataclass
class ViClipTask(BackboneTask):
    """cos(ViCLIP video embedding, ViCLIP text embedding of the full prompt) per video: 8 frames
    sampled "middle" (VBench's get_frame_indices pads a shorter video with its last frame),
    clip_transform(224) on decord's uint8 frames (torchvision rounds the resized image back to
    uint8); the dimension is the mean over videos. Needs the viclip_internvid_10m_flt file of
    tasks/weights.toml; --allow-uncalibrated runs a random-init ViCLIP."""

    weight_files = ("viclip_internvid_10m_flt",)
    backend = (
        "ViCLIP-L/14: its space-time glue here (no library has ViCLIP), open_clip transformers "
        f"({file_of('viclip_internvid_10m_flt')})"
    )

    num_frames: int | None = field(
        default=8,
        metadata={"help": "8 (VBench); 1 takes ViCLIP's single-frame path (mean temporal embedding), for quick checks"},
    )

    def build(self):
        if self.num_frames not in (1, 8):
            raise UserError(f"{self.name}: num_frames must be 8 (VBench) or 1; ViCLIP has 8 temporal positions")
        self._text = {}
        return self.backbone(list(self.weight_files), lambda p: load_viclip(p[0], self.name) if p else ViClip())

    def text_feature(self, prompt: str) -> np.ndarray:
        if prompt not in self._text:
            ids = tokenize(prompt, context_length=self._net.text_encoder.context_length, truncate=True)
            with torch.no_grad():
                self._text[prompt] = self._net.encode_text(ids)[0].double().numpy()
        return self._text[prompt]

    def score(self, ref, frames):
        n = self.num_frames
        if len(frames) < n:  # VBench pads with the last frame
            frames = np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), 0)])
        with torch.no_grad():
            video = self._net.encode_vision(clip_transform(frames, uint8=True)[None])[0].double().numpy()
        text = self.text_feature(ref.prompt)
        return {"value": float(video @ text / (np.linalg.norm(video) * np.linalg.norm(text)))}
