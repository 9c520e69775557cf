"""VBench motion smoothness with flow-based interpolation in place of AMT-S (a proxy)."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.tasks._vbench import VideoTask, motion_smoothness


@register
@dataclass
class VBenchMotionSmoothnessProxy(VideoTask):
    """VBench motion_smoothness (vbench/motion_smoothness.py) with the AMT-S interpolation network
    replaced by bidirectional Farneback flow (warp both neighbours halfway, average): keep the even
    frames, interpolate each midpoint, score (255 - mean |interp - real odd frame|)/255. PROXY:
    the formula is VBench's, the interpolator is not (calibrated: false)."""

    name = "vbench_motion_smoothness_proxy"
    benchmark_dimension = (
        "vbench:motion_smoothness"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "Farneback flow-warped midpoints instead of AMT-S"
    fidelity = "proxy"
    version = "1"
    main_metric = "motion_smoothness"
    summary = "VBench motion smoothness, PROXY (Farneback interpolation instead of AMT-S)"
    smoke_args = {"num_frames": "9"}
    calibrated = False
    num_frames: int | None = field(default=None, metadata={"help": "frames sampled 'middle'; None = all (VBench)"})

    def score(self, ref, frames):
        if len(frames) < 3:
            return {"value": None, "reason": "fewer than 3 frames"}
        return {"value": motion_smoothness(frames)}
