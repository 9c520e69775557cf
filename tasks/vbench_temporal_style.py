"""VBench temporal style (ViCLIP video-text similarity)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.tasks._viclip_task import ViClipTask


@register
@dataclass
class VBenchTemporalStyle(ViClipTask):
    """VBench temporal_style (vbench/temporal_style.py): ViCLIP ViT-L/14 (InternVid-10M-FLT), 8
    frames sampled "middle", clip_transform(224); per video cos(video embedding, text embedding of
    the full prompt); the dimension is the mean over videos. The prompt comes from the video
    source (VBench naming `<prompt>-<index>.mp4`). The architecture and what is unverified: see
    backbones/viclip.py. Needs the ViCLIP weights (tasks/weights.toml); --allow-uncalibrated runs a random-init ViCLIP."""

    name = "vbench_temporal_style"
    benchmark_dimension = (
        "vbench:temporal_style"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    fidelity = "faithful"
    version = "1"
    main_metric = "temporal_style"
    summary = "VBench temporal style (ViCLIP ViT-L/14 on open_clip transformers; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "1", "max_videos": "1"}
