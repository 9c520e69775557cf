"""VBench temporal flickering: exact without any model."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.tasks._vbench import VideoTask, flicker_score, static_filter


@register
@dataclass
class VBenchTemporalFlickering(VideoTask):
    """VBench temporal_flickering (Huang et al., arXiv:2311.17982; vbench/temporal_flickering.py):
    per video (255 - mean_t MAE(frame_t, frame_t+1))/255 over all frames, pixels and channels;
    the dimension is the mean over videos. VBench scores it only on static videos (its
    static_filter.py keeps them with RAFT flow); here the same rule runs on OpenCV Farneback flow
    (the filter is an approximation, the score itself is exact). static_filter=false scores every
    video."""

    name = "vbench_temporal_flickering"
    benchmark_dimension = (
        "vbench:temporal_flickering"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "pixel MAE, no model (exact); VBench's static filter on Farneback flow instead of RAFT"
    fidelity = "faithful"
    per_prompt_rule = 25  # VBench README: 25 videos per prompt, the static filter keeps at most 5
    version = "1"
    main_metric = "temporal_flickering"
    summary = "VBench temporal flickering (exact; static filter on classical flow)"
    smoke_args = {"static_filter": "false"}
    static_filter: bool = field(default=True, metadata={"help": "score only videos the static filter keeps"})

    def score(self, ref, frames):
        is_static, mags = static_filter(frames)
        row = {"static": is_static, "flow_top2pct_max": round(max(mags), 4), "flicker": flicker_score(frames)}
        if self.static_filter and not is_static:
            return dict(row, value=None, reason="not static (VBench scores static videos only)")
        return dict(row, value=row["flicker"])
