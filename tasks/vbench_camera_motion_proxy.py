"""VBench-I2V camera motion with Lucas-Kanade tracks in place of CoTracker2 (a proxy): the named
fallback of vbench_camera_motion (CoTracker2, when installed from its repository)."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.interfaces import Metric
from harness.registry import register
from harness.tasks._vbench import VideoTask, camera_target, grid_tracks_to_labels, lk_track


@register
@dataclass
class VBenchCameraMotionProxy(VideoTask):
    """VBench-I2V camera_motion (vbench2_beta_i2v/camera_motion.py) with a 10x10 grid tracked by
    OpenCV pyramidal Lucas-Kanade instead of CoTracker2: the first and last positions (cast to
    integers) of the middle points of the top/bottom rows and left/right columns are classified
    (threshold 0.005·min(H, W); an edge can move e.g. right and down at once) and mapped by
    VBench's rules to pan/tilt/zoom/static; a video scores 1 when its target (parsed from the
    prompt: "camera pans left", ..., "camera static") is among the predicted labels. Videos whose
    prompt names no camera motion are excluded. PROXY (calibrated: false); vbench_camera_motion
    tracks with CoTracker2 itself."""

    name = "vbench_camera_motion_proxy"
    benchmark_dimension = (
        "vbench-i2v:camera_motion"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "Lucas-Kanade grid tracks instead of CoTracker2, VBench's rules"
    fidelity = "proxy"
    version = "2"
    main_metric = "camera_motion"
    summary = "VBench-I2V camera motion, PROXY (Lucas-Kanade tracks instead of CoTracker2)"
    smoke_args = {"grid": "10"}
    calibrated = False
    grid: int = field(default=10, metadata={"help": "grid points per side (VBench: 10)"})

    def tracks(self, frames):
        """[T, grid², 2] positions (x, y) of a row-major grid."""
        return lk_track(frames, self.grid)[0]

    def score(self, ref, frames):
        target = camera_target(ref.prompt)
        if target is None:
            return {"value": None, "reason": "prompt names no camera motion"}
        labels = grid_tracks_to_labels(self.tracks(frames), self.grid, *frames.shape[1:3])
        return {"value": float(target in labels), "target": target, "predicted": sorted(labels)}

    def aggregate(self, rows):
        metrics = super().aggregate(rows)
        for target in sorted({r["target"] for r in rows if r.get("target")}):
            metrics[f"camera_motion@{target}"] = Metric.mean(
                [r["value"] for r in rows if r.get("target") == target], "higher", "fraction"
            )
        return metrics
