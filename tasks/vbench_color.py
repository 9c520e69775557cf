"""VBench color (GRiT outputs from a file, or the synthetic oracle)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.tasks._detections import DetectionTask, color_counts


@register
@dataclass
class VBenchColor(DetectionTask):
    """VBench color — vbench/color.py: per video, (frames where a GRiT dense caption of a box of the target object
    contains the target colour) / (frames where such a caption contains any of the 12 colour
    words); a video with no such frame is skipped; the dimension is the mean of the per-video
    rates.

    backend=file reads the per-frame outputs of the official GRiT from `detections=FILE.jsonl`
    (format: tasks/_detections.py, README); backend=synthetic_oracle scores the synthetic_scenes
    videos with an HSV-threshold detector (a proxy: calibrated false)."""

    name = "vbench_color"
    benchmark_dimension = "vbench:color"  # benchmark:dimension (the coverage table, the generator's prompt list)
    backend = "VBench's rule on your GRiT dense captions (backend=file)"
    fidelity = "external"
    version = "1"
    main_metric = "color"
    dimension = "color"
    frame_weighted = False
    summary = "VBench color from GRiT outputs (file) or the synthetic oracle (proxy)"

    def rule(self, frames, tgt):
        with_any, with_target = color_counts(frames, *tgt)
        if not with_any:  # VBench skips the video
            return {"value": None, "reason": "no frame shows the object with a colour word", "frame_scores": []}
        return {"value": with_target / with_any, "object_frames": with_any, "color_frames": with_target}
