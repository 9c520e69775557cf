"""VBench background consistency (CLIP ViT-B/32 features)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.backbones.clip import clip_transform, create_clip, load_clip
from harness.tasks._backbone_tasks import ConsistencyTask

CLIP_B32_FILE = ("ViT-B-32.pt", "OpenAI's CLIP ViT-B/32 release (the file clip.load('ViT-B/32') caches)")


@register
@dataclass
class VBenchBackgroundConsistency(ConsistencyTask):
    """VBench background_consistency (vbench/background_consistency.py): the subject-consistency
    formula on CLIP ViT-B/32 image features (clip_transform(224): bicubic resize, centre crop, CLIP
    normalisation); frame-weighted. The tower is open_clip's ViT-B-32 with QuickGELU (OpenAI's);
    needs ViT-B-32.pt; --allow-uncalibrated runs a random-init tower."""

    name = "vbench_background_consistency"
    benchmark_dimension = (
        "vbench:background_consistency"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "CLIP ViT-B/32 visual tower from open_clip, OpenAI weights (ViT-B-32.pt)"
    fidelity = "faithful"
    version = "1"
    main_metric = "background_consistency"
    summary = "VBench background consistency (CLIP ViT-B/32 from open_clip; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "2"}

    def build(self):
        return self.backbone(
            [CLIP_B32_FILE],
            lambda p: (
                load_clip(create_clip("ViT-B-32"), p[0], self.name, "visual") if p else create_clip("ViT-B-32").visual
            ),
        )

    def transform(self, frames):
        return clip_transform(frames)
