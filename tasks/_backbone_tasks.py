"""The VBench dimensions computed from a backbone's per-frame features (the networks themselves are
in harness.backbones): weights located in the local weights folder (tasks/_weights.py; the files
are named in tasks/weights.toml) or random
init with allow_uncalibrated, features embedded in batches, and the frame-to-frame consistency
dimensions (subject_/background_consistency)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from harness.interfaces import Metric
from harness.tasks._vbench import VideoTask, consistency_scores
from harness.tasks._weights import locate


@dataclass
class BackboneTask(VideoTask):
    """A VBench dimension computed from a backbone's per-frame features (weights from the local
    weights folder; random init only with allow_uncalibrated). `weight_files`: the keys of
    tasks/weights.toml this task loads."""

    weight_files: ClassVar[tuple[str, ...]] = ()

    weights_dir: str = field(default="", metadata={"help": "folder with the weights (default $HARNESS_VIDEO_WEIGHTS)"})
    weights_sha256: str = field(
        default="",
        metadata={"help": "expected sha256 of the (first) weights file; overrides the published one (harness weights)"},
    )
    allow_uncalibrated: bool = field(default=False, metadata={"help": "random-init backbone when weights are missing"})
    num_frames: int | None = field(default=None, metadata={"help": "frames sampled 'middle'; None = all (VBench)"})
    batch_size: int = 16
    max_videos: int = field(default=0, metadata={"help": "score only the first N videos (0 = all; quick checks)"})

    def build(self):
        """Returns (net, facts); subclasses name their file and layout."""
        raise TypeError(f"{type(self).__name__} must define build()")  # abstract: each subclass overrides it

    def backbone(self, keys: list[str], make):
        """keys: tasks/weights.toml entries (weights_sha256 applies to the first); make(paths or None) -> module."""
        paths, facts = [], {"calibrated": True, "weights": []}
        for i, key in enumerate(keys):
            user_sha = self.weights_sha256 if i == 0 else ""
            path, f = locate(self.name, self.weights_dir, key, user_sha, self.allow_uncalibrated)
            paths.append(path)
            checked = {"sha256_checked": f["sha256_checked"]} if path is not None else {}
            facts["weights"].append({"file": f["weights_file"], "sha256": f["weights_sha256"], **checked})
            facts["calibrated"] &= f["calibrated"]
        torch.manual_seed(0)
        return make(paths if all(p is not None for p in paths) else None).eval(), facts

    def run(self, ctx):
        self._net, facts = self.build()
        self.calibrated = facts["calibrated"]
        result = super().run(ctx)
        result.details.update(facts)
        return result

    def embed(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return (
                torch.cat([self._net(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])
                .double()
                .numpy()
            )


class ConsistencyTask(BackboneTask):
    """subject_/background_consistency: the frame scores of `consistency_scores` on the backbone's
    features; the dimension is frame-weighted (VBench sums frame scores over all videos and divides by
    their count), `per_video` is the mean of the per-video means."""

    def transform(self, frames: np.ndarray) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define transform()")  # abstract: each subclass overrides it

    def score(self, ref, frames):
        s = consistency_scores(self.embed(self.transform(frames)))
        return {"value": float(sum(s) / len(s)), "frame_scores": [round(float(v), 6) for v in s]}

    def aggregate(self, rows):
        scores = [s for r in rows for s in r.get("frame_scores", [])]
        return {
            self.main_metric: Metric.mean(scores, "higher", "cosine"),
            "per_video": super().aggregate(rows)[self.main_metric],
        }
