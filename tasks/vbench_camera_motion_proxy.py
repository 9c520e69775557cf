"""VBench-I2V camera motion with Lucas-Kanade tracks in place of CoTracker2 (a proxy)."""

from __future__ import annotations

from dataclasses import dataclass, field


from harness.interfaces import Metric
from harness.registry import register
from harness.tasks._vbench import VideoTask, camera_labels, camera_target, lk_track


@register
@dataclass
class VBenchCameraMotionProxy(VideoTask):
    """VBench-I2V camera_motion (vbench2_beta_i2v/camera_motion.py) with a 10x10 grid tracked by
    OpenCV pyramidal Lucas-Kanade instead of CoTracker2: the first and last positions of the middle
    points of the top/bottom rows and left/right columns are classified (threshold
    0.005·min(H, W)) and mapped by VBench's rules to pan/tilt/zoom/static; a video scores 1 when its
    target (parsed from the prompt: "camera pans left", ..., "camera static") is among the
    predicted labels. Videos whose prompt names no camera motion are excluded. PROXY (calibrated:
    false)."""

    name = "vbench_camera_motion_proxy"
    benchmark_dimension = (
        "vbench-i2v:camera_motion"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "Lucas-Kanade grid tracks instead of CoTracker2, VBench's rules"
    fidelity = "proxy"
    version = "1"
    main_metric = "camera_motion"
    summary = "VBench-I2V camera motion, PROXY (Lucas-Kanade tracks instead of CoTracker2)"
    smoke_args = {"grid": "10"}
    calibrated = False
    grid: int = field(default=10, metadata={"help": "grid points per side (VBench: 10)"})

    def score(self, ref, frames):
        target = camera_target(ref.prompt)
        if target is None:
            return {"value": None, "reason": "prompt names no camera motion"}
        pos, _ = lk_track(frames, self.grid)
        h, w = frames.shape[1:3]
        labels = camera_labels(pos[0].reshape(self.grid, self.grid, 2), pos[-1].reshape(self.grid, self.grid, 2), h, w)
        return {"value": float(target in labels), "target": target, "predicted": sorted(labels)}

    def aggregate(self, rows):
        metrics = super().aggregate(rows)
        for target in sorted({r["target"] for r in rows if r.get("target")}):
            metrics[f"camera_motion@{target}"] = Metric.mean(
                [r["value"] for r in rows if r.get("target") == target], "higher", "fraction"
            )
        return metrics
