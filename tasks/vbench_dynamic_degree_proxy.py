"""VBench dynamic degree with OpenCV flow in place of RAFT (a proxy): the named fallback of
vbench_dynamic_degree (RAFT from torchvision) where the RAFT weights are not at hand."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.tasks._vbench import VideoTask, dynamic_degree_row, flow_magnitude, top_mean


@register
@dataclass
class VBenchDynamicDegreeProxy(VideoTask):
    """VBench dynamic_degree (vbench/dynamic_degree.py) with Farneback flow instead of RAFT-things:
    frames subsampled every round(fps/8); per consecutive pair the mean of the top 5 % flow
    magnitudes; a video is dynamic when at least round(4·N/16) pairs exceed
    max(1, 8/fps)·6·min(H, W)/256; the dimension is the fraction of dynamic videos. PROXY: the rule
    is VBench's, the flow is not, so values are not comparable with the leaderboard (the record says
    calibrated: false). The faithful task is vbench_dynamic_degree (RAFT, torchvision)."""

    name = "vbench_dynamic_degree_proxy"
    benchmark_dimension = (
        "vbench:dynamic_degree"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "Farneback flow instead of RAFT, VBench's thresholds"
    fidelity = "proxy"
    version = "1"
    main_metric = "dynamic_degree"
    summary = "VBench dynamic degree, PROXY (Farneback flow instead of RAFT)"
    smoke_args = {"target_fps": "8"}
    unit = "fraction dynamic"
    calibrated = False
    target_fps: float = field(
        default=8.0, metadata={"help": "subsample every round(fps/target_fps) frames (VBench: 8)"}
    )

    def score(self, ref, frames):
        f = frames[:: max(1, round(ref.fps / self.target_fps))]
        return dynamic_degree_row(
            f, ref.fps, [top_mean(flow_magnitude(f[i], f[i + 1]), 0.05) for i in range(len(f) - 1)]
        )
