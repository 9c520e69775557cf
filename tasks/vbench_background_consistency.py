"""VBench background consistency (CLIP ViT-B/32 features)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.backbones.clip import clip_transform, create_clip, load_clip
from harness.tasks._backbone_tasks import ConsistencyTask
from harness.tasks._weights import file_of


@register
@dataclass
class VBenchBackgroundConsistency(ConsistencyTask):
    """VBench background_consistency (vbench/background_consistency.py): the subject-consistency
    formula on CLIP ViT-B/32 image features (clip_transform(224): bicubic resize, centre crop, CLIP
    normalisation); frame-weighted. The tower is open_clip's ViT-B-32 with QuickGELU (OpenAI's);
    needs OpenAI's ViT-B/32 weights (clip_vit_b32_openai in tasks/weights.toml); --allow-uncalibrated runs a random-init tower."""

    name = "vbench_background_consistency"
    benchmark_dimension = (
        "vbench:background_consistency"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    weight_files = ("clip_vit_b32_openai",)
    backend = f"CLIP ViT-B/32 visual tower from open_clip, OpenAI weights ({file_of('clip_vit_b32_openai')})"
    fidelity = "faithful"
    version = "1"
    main_metric = "background_consistency"
    summary = "VBench background consistency (CLIP ViT-B/32 from open_clip; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "2"}

    def build(self):
        return self.backbone(
            list(self.weight_files),
            lambda p: (
                load_clip(create_clip("ViT-B-32"), p[0], self.name, "visual") if p else create_clip("ViT-B-32").visual
            ),
        )

    def transform(self, frames):
        return clip_transform(frames)
