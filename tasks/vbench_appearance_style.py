"""VBench appearance style (CLIP ViT-B/32 image-text similarity)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.errors import UserError
from harness.registry import register
from harness.backbones.clip import create_clip, load_clip, similarity_logits, tokenize
from harness.tasks._backbone_tasks import BackboneTask
from harness.tasks._weights import file_of
from harness.tasks._clip_tasks import clip_transform_image, frame_weighted, read_suite, suite_lookup


@register
@dataclass
class VBenchAppearanceStyle(BackboneTask):
    """VBench appearance_style (vbench/appearance_style.py): every frame as a PIL image through
    clip_transform_Image(224) (PIL bicubic resize of the short side, centre crop, CLIP
    normalisation); per frame logits_per_text / 100 = exp(logit_scale)·cos(frame, style text)/100
    (OpenAI's logit_scale is ln 100, so this is the cosine) with CLIP ViT-B/32; the dimension is
    frame-weighted (sum of frame scores / frame count, VBench on one process), `per_video` the mean
    of the per-video means. (With several GPUs the official code averages `cur_sim`, the last
    frame's value only — a bug not reproduced here.)

    The style text is the prompt's `auxiliary_info.appearance_style` in VBench's suite (`suite=`,
    VBench_full_info.json; VBench's custom-input mode refuses this dimension for lack of it), or
    one `style=` text for every video. Needs OpenAI's ViT-B/32 weights (clip_vit_b32_openai in
    tasks/weights.toml); --allow-uncalibrated runs a random-init CLIP."""

    name = "vbench_appearance_style"
    benchmark_dimension = (
        "vbench:appearance_style"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    weight_files = ("clip_vit_b32_openai",)
    backend = f"CLIP ViT-B/32 from open_clip, OpenAI weights ({file_of('clip_vit_b32_openai')})"
    fidelity = "faithful"
    version = "1"
    main_metric = "appearance_style"
    summary = "VBench appearance style (CLIP ViT-B/32 from open_clip; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "2", "style": "Van Gogh style", "max_videos": "1"}
    suite: str = field(default="", metadata={"help": "VBench_full_info.json: style text per prompt"})
    style: str = field(default="", metadata={"help": "one style text for every video (else from suite)"})

    def build(self):
        if not self.suite and not self.style:
            raise UserError(
                f"{self.name} needs the style text: suite=VBench_full_info.json (auxiliary_info."
                f"appearance_style per prompt) or style=TEXT"
            )
        self._suite = read_suite(self.suite, self.name) if self.suite else []
        return self.backbone(
            list(self.weight_files),
            lambda p: load_clip(create_clip("ViT-B-32"), p[0], self.name) if p else create_clip("ViT-B-32"),
        )

    def style_of(self, prompt: str) -> str | None:
        entry = suite_lookup(self._suite, prompt) if self._suite else None
        if entry is None:
            return self.style or None
        aux = (entry.get("auxiliary_info") or {}).get("appearance_style")
        return (aux.get("appearance_style") if isinstance(aux, dict) else aux) or self.style or None

    def similarities(self, images: torch.Tensor, style: str):
        """logits_per_text[0] / 100 for a batch of frames."""
        ids = tokenize(style)
        with torch.no_grad():
            return (
                torch.cat(
                    [
                        similarity_logits(self._net, images[i : i + self.batch_size], ids)[0]
                        for i in range(0, len(images), self.batch_size)
                    ]
                )
                .double()
                .numpy()
                / 100
            )

    def score(self, ref, frames):
        style = self.style_of(ref.prompt)
        if style is None:
            return {"value": None, "reason": "no appearance_style text for this prompt in the suite"}
        s = self.similarities(clip_transform_image(frames), style)
        return {"value": float(s.mean()), "style": style, "frame_scores": [round(float(v), 6) for v in s]}

    def aggregate(self, rows):
        return frame_weighted(rows, self.main_metric, "cosine")
