"""VBench imaging quality (pyiqa's MUSIQ trained on SPAQ).

MUSIQ is pyiqa's own `pyiqa.archs.musiq_arch.MUSIQ`, the network VBench's imaging_quality builds
through `pyiqa.create_metric('musiq-spaq')`. pyiqa 0.1.16 is installed by the Makefile with
`pip install --no-deps`: its declared requirements (bitsandbytes, facexlib, tensorboard,
pre-commit, pytest, ruff, openai-clip, yapf, datasets, accelerate, ...) are not needed by MUSIQ and
made pip's resolution beside the project's pins run past 15 minutes; importing
`pyiqa.archs.musiq_arch` loads only torch, torchvision, numpy, cv2, PIL, requests, scipy, yaml,
tqdm and huggingface_hub (measured with `python -X importtime` on pyiqa 0.1.16), all declared in
the video extra. `MUSIQ(pretrained=False)` builds the network without downloading anything, with
the one-score head of the SPAQ/KonIQ checkpoints; the harness loads the local
checkpoint itself (the `params` entry of pyiqa's files, strict key check)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from harness.backbones._common import load_checked
from harness.backbones.video_vit import checkpoint_state
from harness.errors import UserError
from harness.interfaces import Metric
from harness.registry import register
from harness.tasks._backbone_tasks import BackboneTask
from harness.tasks._weights import file_of

PYIQA = "pyiqa==0.1.16"


def musiq():
    """pyiqa's MUSIQ, untrained, with SPAQ's one-score head (pretrained=False: no download, num_class 1)."""
    try:
        from pyiqa.archs.musiq_arch import MUSIQ
    except ImportError as e:
        raise UserError(
            f"vbench_imaging_quality scores with pyiqa's MUSIQ, which needs the package {e.name!r}: "
            f"pip install --no-deps {PYIQA} (make install does; its other declared requirements are not "
            f"needed) and pip install 'harness-eval[video]'"
        ) from None
    return MUSIQ(pretrained=False)


def load_musiq(path, task: str):
    """pyiqa's MUSIQ with the checkpoint at `path` (pyiqa's files nest the weights under `params`), strictly."""
    state = checkpoint_state(path)
    return load_checked(musiq(), state.get("params", state), task, path, "pyiqa's MUSIQ layout")


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
    """VBench imaging_quality (vbench/imaging_quality.py): MUSIQ trained on SPAQ (pyiqa's
    musiq_arch.MUSIQ, the network VBench uses) scores every frame (0-100) after the 'longer'
    preprocessing (longer side capped at 512); a video's value is the mean frame score (0-100, in
    the samples); the dimension is the mean over videos / 100. Needs musiq_spaq of tasks/weights.toml
    and pyiqa (installed with --no-deps by make install); --allow-uncalibrated runs a random-init
    MUSIQ (plumbing only)."""

    name = "vbench_imaging_quality"
    benchmark_dimension = (
        "vbench:imaging_quality"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    weight_files = ("musiq_spaq",)
    backend = f"MUSIQ-SPAQ from pyiqa ({PYIQA}; {file_of('musiq_spaq')})"
    fidelity = "faithful"
    version = "1"
    main_metric = "imaging_quality"
    summary = "VBench imaging quality (MUSIQ-SPAQ from pyiqa; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "1"}
    num_frames: int | None = field(default=None, metadata={"help": "frames sampled 'middle'; None = all (VBench)"})

    def build(self):
        return self.backbone(list(self.weight_files), lambda p: load_musiq(p[0], self.name) if p else musiq())

    def score(self, ref, frames):
        x = longer_512(frames)
        with torch.no_grad():
            s = [float(self._net(x[i : i + 1])[0, 0]) for i in range(len(x))]
        return {"value": float(np.mean(s)), "frame_scores": [round(v, 4) for v in s]}

    def aggregate(self, rows):
        vals = [r["value"] / 100 for r in rows if r.get("value") is not None]
        return {self.main_metric: Metric.mean(vals, "higher", "MUSIQ / 100")}
