"""VBench imaging quality (MUSIQ-SPAQ in plain PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from harness.errors import UserError
from harness.interfaces import Metric
from harness.registry import register
from harness.backbones.musiq import MUSIQ
from harness.backbones.video_vit import checkpoint_state
from harness.tasks._backbone_tasks import BackboneTask
from harness.tasks._weights import file_of


def longer_512(frames: np.ndarray) -> torch.Tensor:
    """VBench's preprocessing mode 'longer' (the default): when the longer side exceeds 512, resize
    to (int(s·H), int(s·W)) with s = 512 / max(H, W) (torchvision Resize: bilinear, antialiased as
    torchvision >= 0.17 does for tensors), then /255. [T, 3, H', W'] in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if max(h, w) > 512:
        s = 512 / max(h, w)
        x = F.interpolate(x, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False, antialias=True)
    return x / 255


@register
@dataclass
class VBenchImagingQuality(BackboneTask):
    """VBench imaging_quality (vbench/imaging_quality.py): MUSIQ trained on SPAQ (pyiqa's musiq_arch,
    written here in plain PyTorch: backbones/musiq.py) scores every frame (0-100) after the 'longer'
    preprocessing (longer side capped at 512); a video's value is the mean frame score (0-100, in
    the samples); the dimension is the mean over videos / 100. Needs musiq_spaq of tasks/weights.toml;
    --allow-uncalibrated runs a random-init MUSIQ (plumbing only)."""

    name = "vbench_imaging_quality"
    benchmark_dimension = (
        "vbench:imaging_quality"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    weight_files = ("musiq_spaq",)
    backend = f"MUSIQ-SPAQ in plain PyTorch (backbones/musiq.py; {file_of('musiq_spaq')})"
    fidelity = "faithful"
    version = "1"
    main_metric = "imaging_quality"
    summary = "VBench imaging quality (MUSIQ-SPAQ in plain PyTorch; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "1"}
    num_frames: int | None = field(default=None, metadata={"help": "frames sampled 'middle'; None = all (VBench)"})

    def build(self):
        def make(paths):
            net = MUSIQ()
            if paths:
                state = checkpoint_state(paths[0])
                state = state.get("params", state)  # pyiqa training checkpoints nest the weights
                missing, unexpected = net.load_state_dict(state, strict=False)
                if missing or unexpected:
                    raise UserError(
                        f"{self.name}: {paths[0]} does not match pyiqa's MUSIQ layout "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
                    )
            return net

        return self.backbone(list(self.weight_files), make)

    def score(self, ref, frames):
        x = longer_512(frames)
        with torch.no_grad():
            s = [float(self._net(x[i : i + 1])[0]) for i in range(len(x))]
        return {"value": float(np.mean(s)), "frame_scores": [round(v, 4) for v in s]}

    def aggregate(self, rows):
        vals = [r["value"] / 100 for r in rows if r.get("value") is not None]
        return {self.main_metric: Metric.mean(vals, "higher", "MUSIQ / 100")}
