"""VBench scene (Tag2Text outputs from a file, or the synthetic oracle)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.tasks._detections import DetectionTask, frame_rule, scene_frames


@register
@dataclass
class VBenchScene(DetectionTask):
    """VBench scene — vbench/scene.py: a frame succeeds when every word of the scene label is a substring of its
    Tag2Text caption; frame-weighted.

    backend=file reads the per-frame outputs of the official Tag2Text from `detections=FILE.jsonl`
    (format: tasks/_detections.py, README); backend=synthetic_oracle scores the synthetic_scenes
    videos with an HSV-threshold detector (a proxy: calibrated false)."""

    name = "vbench_scene"
    benchmark_dimension = "vbench:scene"  # benchmark:dimension (the coverage table, the generator's prompt list)
    backend = "VBench's rule on your Tag2Text captions (backend=file)"
    fidelity = "external"
    version = "1"
    main_metric = "scene"
    dimension = "scene"
    summary = "VBench scene from Tag2Text outputs (file) or the synthetic oracle (proxy)"

    def rule(self, frames, tgt):
        return frame_rule(scene_frames(frames, tgt))
