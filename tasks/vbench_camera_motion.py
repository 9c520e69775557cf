"""VBench-I2V camera motion on CoTracker2 (facebookresearch/co-tracker, installed from its
repository: it is not on PyPI); vbench_camera_motion_proxy (Lucas-Kanade tracks, the same rules)
is the named fallback."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.backbones._common import load_checked, load_state
from harness.errors import UserError
from harness.registry import register
from harness.tasks._weights import file_of, locate
from harness.tasks.vbench_camera_motion_proxy import VBenchCameraMotionProxy

COTRACKER_INSTALL = "pip install 'git+https://github.com/facebookresearch/co-tracker.git'"


def cotracker_predictor():
    """CoTracker's offline predictor configured as torch.hub's `cotracker2` entry (window 8; the
    v2 model where the installed co-tracker also carries CoTracker3), untrained."""
    try:
        from cotracker.predictor import CoTrackerPredictor
    except ImportError:
        raise UserError(
            "vbench_camera_motion tracks with CoTracker2, which is not on PyPI: install it from its "
            f"repository into this environment ({COTRACKER_INSTALL}), or score with the Lucas-Kanade "
            "fallback: --task vbench_camera_motion_proxy"
        ) from None
    accepted = inspect.signature(CoTrackerPredictor).parameters
    kw = {k: v for k, v in (("v2", True), ("window_len", 8)) if k in accepted}
    return CoTrackerPredictor(checkpoint=None, **kw)


@register
@dataclass
class VBenchCameraMotion(VBenchCameraMotionProxy):
    """VBench-I2V camera_motion (vbench2_beta_i2v/camera_motion.py) on CoTracker2: the whole video
    (uint8 RGB as float, [1, T, 3, H, W]) into CoTracker's predictor with grid_size 10; the first
    and last positions of the grid's edge midpoints classified by VBench's rules (see
    vbench_camera_motion_proxy); a video scores 1 when its prompt's target motion is among the
    labels. Needs the `cotracker` package (not on PyPI: pip install from
    github.com/facebookresearch/co-tracker) and the cotracker2 file of tasks/weights.toml in the weights folder; the refusal
    names both and the fallback, vbench_camera_motion_proxy (Lucas-Kanade)."""

    name = "vbench_camera_motion"
    weight_files = ("cotracker2",)
    backend = f"CoTracker2 (the co-tracker package, installed from its repository, not run in CI; {file_of('cotracker2')}), VBench's rules"
    fidelity = "faithful"
    version = "1"
    summary = "VBench-I2V camera motion (CoTracker2, installed from its repository; local weights)"
    calibrated = True
    smoke_args = {"grid": "10"}
    smoke_methods = ()  # CoTracker cannot be installed from PyPI: the refusal is tested in test_camera_motion.py
    weights_dir: str = field(
        default="", metadata={"help": "folder with the CoTracker2 weights (default $HARNESS_VIDEO_WEIGHTS)"}
    )
    weights_sha256: str = field(default="", metadata={"help": "expected sha256 of the CoTracker2 weights"})

    def run(self, ctx):
        self._model = cotracker_predictor()
        path, facts = locate(self.name, self.weights_dir, "cotracker2", self.weights_sha256, False)
        load_checked(self._model.model, load_state(path), self.name, path, "CoTracker2's layout")
        self._model.eval()
        result = super().run(ctx)
        result.details.update(facts)
        return result

    def tracks(self, frames):
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float()
        with torch.no_grad():
            tracks, _ = self._model(video, grid_size=self.grid)
        return tracks[0].numpy()
