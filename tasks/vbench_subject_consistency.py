"""VBench subject consistency (DINO ViT-B/16 features)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.backbones._common import load_into
from harness.backbones.dino import dino_transform, dino_vit
from harness.tasks._backbone_tasks import ConsistencyTask
from harness.tasks._weights import file_of


@register
@dataclass
class VBenchSubjectConsistency(ConsistencyTask):
    """VBench subject_consistency (vbench/subject_consistency.py): DINO ViT-B/16 features of every
    frame (short side resized to 224, no crop, ImageNet normalisation), L2-normalised; frame i >= 1
    scores (max(0, cos(f_i-1, f_i)) + max(0, cos(f_0, f_i)))/2; the dimension is frame-weighted
    (`subject_consistency`), `per_video` the mean of the per-video means. Needs
    the dino_vitb16 file of tasks/weights.toml; --allow-uncalibrated runs a random-init ViT."""

    name = "vbench_subject_consistency"
    benchmark_dimension = (
        "vbench:subject_consistency"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    weight_files = ("dino_vitb16",)
    backend = f"DINO ViT-B/16 from timm, DINO's position interpolation ({file_of('dino_vitb16')})"
    fidelity = "faithful"
    version = "1"
    main_metric = "subject_consistency"
    summary = "VBench subject consistency (DINO ViT-B/16 from timm; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "2"}

    def build(self):
        return self.backbone(
            list(self.weight_files), lambda p: load_into(dino_vit(), p[0], "", self.name) if p else dino_vit()
        )

    def transform(self, frames):
        return dino_transform(frames)
