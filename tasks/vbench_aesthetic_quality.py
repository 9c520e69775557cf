"""VBench aesthetic quality (CLIP ViT-L/14 + the LAION aesthetic linear head)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.registry import register
from harness.backbones._common import load_into
from harness.backbones.clip import clip_transform, create_clip, load_clip
from harness.tasks._backbone_tasks import BackboneTask
from harness.tasks._weights import file_of


class AestheticPredictor(nn.Module):
    """LAION aesthetic predictor v1: Linear(768, 1) on the L2-normalised CLIP ViT-L/14 image embedding."""

    def __init__(self):
        super().__init__()
        self.visual, self.head = create_clip("ViT-L-14").visual, nn.Linear(768, 1)  # open_clip, QuickGELU (OpenAI's)

    def forward(self, x):
        return self.head(nn.functional.normalize(self.visual(x), dim=-1)).squeeze(-1)


def build_predictor(paths, task: str) -> AestheticPredictor:
    net = AestheticPredictor()
    if paths:
        load_clip(net, paths[0], task, "visual")
        load_into(net.head, paths[1], "", task)
    return net


@register
@dataclass
class VBenchAestheticQuality(BackboneTask):
    """VBench aesthetic_quality (vbench/aesthetic_quality.py): every frame through clip_transform(224)
    (bicubic resize of the short side without antialiasing, centre crop, CLIP normalisation), the
    CLIP ViT-L/14 image embedding L2-normalised, the LAION linear head
    (Linear(768, 1)); per video mean(score/10); the dimension is the mean over videos. Needs
    clip_vit_l14_openai and laion_aesthetic_head of tasks/weights.toml (weights_sha256 overrides the
    first's published hash); --allow-uncalibrated runs a random-init tower and head."""

    name = "vbench_aesthetic_quality"
    benchmark_dimension = (
        "vbench:aesthetic_quality"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    weight_files = ("clip_vit_l14_openai", "laion_aesthetic_head")
    backend = (
        f"CLIP ViT-L/14 from open_clip, OpenAI weights ({file_of('clip_vit_l14_openai')}), "
        f"+ LAION linear head ({file_of('laion_aesthetic_head')})"
    )
    fidelity = "faithful"
    version = "1"
    main_metric = "aesthetic_quality"
    summary = "VBench aesthetic quality (CLIP ViT-L/14 from open_clip + LAION linear head; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "1", "max_videos": "1"}

    def build(self):
        return self.backbone(list(self.weight_files), lambda p: build_predictor(p, self.name))

    def score(self, ref, frames):
        s = self.embed(clip_transform(frames)) / 10
        return {"value": float(s.mean()), "frame_scores": [round(float(v), 6) for v in s]}
