"""VBench multiple objects (GRiT outputs from a file, or the synthetic oracle)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.tasks._detections import DetectionTask, frame_rule, multiple_frames


@register
@dataclass
class VBenchMultipleObjects(DetectionTask):
    """VBench multiple_objects — vbench/multiple_objects.py: the target "A and B" is split on ' and '; a frame succeeds when
    both are among its GRiT class names; frame-weighted (VBench samples 16 frames "middle").

    backend=file reads the per-frame outputs of the official GRiT from `detections=FILE.jsonl`
    (format: tasks/_detections.py, README); backend=synthetic_oracle scores the synthetic_scenes
    videos with an HSV-threshold detector (a proxy: calibrated false)."""

    name = "vbench_multiple_objects"
    benchmark_dimension = (
        "vbench:multiple_objects"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "VBench's rule on your GRiT detections (backend=file)"
    fidelity = "external"
    version = "1"
    main_metric = "multiple_objects"
    dimension = "multiple_objects"
    summary = "VBench multiple objects from GRiT outputs (file) or the synthetic oracle (proxy)"

    def rule(self, frames, tgt):
        return frame_rule(multiple_frames(frames, tgt))
