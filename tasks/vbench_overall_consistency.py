"""VBench overall consistency (ViCLIP video-text similarity)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.tasks._viclip_task import ViClipTask


@register
@dataclass
class VBenchOverallConsistency(ViClipTask):
    """VBench overall_consistency (vbench/overall_consistency.py, the temporal_style code on the
    overall_consistency prompt list): ViCLIP ViT-L/14 (InternVid-10M-FLT), 8 frames sampled
    "middle", clip_transform(224); per video cos(video embedding, text embedding of the full
    prompt); the dimension is the mean over videos. The architecture and what is unverified: see
    backbones/viclip.py. Needs the ViCLIP weights (tasks/weights.toml); --allow-uncalibrated runs a random-init ViCLIP."""

    name = "vbench_overall_consistency"
    benchmark_dimension = (
        "vbench:overall_consistency"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    fidelity = "faithful"
    version = "1"
    main_metric = "overall_consistency"
    summary = "VBench overall consistency (ViCLIP ViT-L/14 on open_clip transformers; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "1", "max_videos": "1"}
