"""VBench spatial relationship (GRiT outputs from a file, or the synthetic oracle)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.tasks._detections import DetectionTask, frame_rule, spatial_frames


@register
@dataclass
class VBenchSpatialRelationship(DetectionTask):
    """VBench spatial_relationship — vbench/spatial_relationship.py: per frame, the max over pairs of boxes of object_a/object_b
    of get_position_score (right axis of the centre offset and IoU < 0.1 -> 1, IoU >= 0.1 ->
    0.1/IoU, else 0; left and right, top and bottom are not told apart, as in VBench); frame-
    weighted (16 frames "middle").

    backend=file reads the per-frame outputs of the official GRiT from `detections=FILE.jsonl`
    (format: tasks/_detections.py, README); backend=synthetic_oracle scores the synthetic_scenes
    videos with an HSV-threshold detector (a proxy: calibrated false)."""

    name = "vbench_spatial_relationship"
    benchmark_dimension = (
        "vbench:spatial_relationship"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "VBench's rule on your GRiT detections (backend=file)"
    fidelity = "external"
    version = "1"
    main_metric = "spatial_relationship"
    dimension = "spatial_relationship"
    summary = "VBench spatial relationship from GRiT outputs (file) or the synthetic oracle (proxy)"

    def rule(self, frames, tgt):
        return frame_rule(spatial_frames(frames, *tgt))
