"""VBench object class (GRiT outputs from a file, or the synthetic oracle)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.tasks._detections import DetectionTask, frame_rule, object_frames


@register
@dataclass
class VBenchObjectClass(DetectionTask):
    """VBench object_class — vbench/object_class.py: a frame succeeds when the target object (auxiliary_info `object`, or
    the prompt without its article) is among the frame's GRiT class names (score > 0.5); frame-
    weighted over all videos (`object_class`), `per_video` the mean of the per-video rates.

    backend=file reads the per-frame outputs of the official GRiT from `detections=FILE.jsonl`
    (format: tasks/_detections.py, README); backend=synthetic_oracle scores the synthetic_scenes
    videos with an HSV-threshold detector (a proxy: calibrated false)."""

    name = "vbench_object_class"
    benchmark_dimension = "vbench:object_class"  # benchmark:dimension (the coverage table, the generator's prompt list)
    backend = "VBench's rule on your GRiT detections (backend=file)"
    fidelity = "external"
    version = "1"
    main_metric = "object_class"
    dimension = "object_class"
    summary = "VBench object class from GRiT outputs (file) or the synthetic oracle (proxy)"

    def rule(self, frames, tgt):
        return frame_rule(object_frames(frames, tgt))
