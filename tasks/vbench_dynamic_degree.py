"""VBench dynamic degree on RAFT from torchvision's optical-flow models (the Farneback proxy,
vbench_dynamic_degree_proxy, is the named fallback where the RAFT weights are not at hand)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from harness.backbones._common import load_into
from harness.registry import register
from harness.tasks._backbone_tasks import BackboneTask
from harness.tasks._vbench import dynamic_degree_row, dynamic_frames, top_mean
from harness.tasks._weights import file_of
from harness.video import require


def raft_large():
    """torchvision's RAFT-large (the architecture of raft-things), untrained."""
    return require("torchvision.models.optical_flow").raft_large(weights=None, progress=False)


def pad8(x: torch.Tensor) -> torch.Tensor:
    """RAFT's InputPadder in its default ('sintel') mode, which VBench uses: replicate-pad height
    and width up to multiples of 8, splitting each pad between both sides (the extra pixel after).
    A side under 128 px is padded up to 128 the same way: torchvision's RAFT refuses feature maps
    under 16 px at 1/8 resolution (VBench's videos are far larger; its own RAFT would take down to
    64 px, so on videos under 128 px the values differ from VBench's)."""
    ph, pw = (max(128, n + -n % 8) - n for n in x.shape[-2:])
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="replicate")


def raft_pair_scores(net, frames: np.ndarray, iters: int = 20, batch: int = 8) -> list[float]:
    """VBench's per-pair dynamic_degree score with RAFT: each consecutive pair of uint8 RGB frames
    [T, H, W, 3], padded (pad8), mapped to [-1, 1] (the original RAFT does 2·(x/255) - 1 inside its
    forward; torchvision's expects it done), flow after `iters` refinements, and the mean of the top
    5 % of sqrt(u² + v²) over the *padded* flow field (VBench scores the padded flow)."""
    x = pad8(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float())
    x = 2 * (x / 255.0) - 1
    out = []
    with torch.no_grad():
        for i in range(0, len(x) - 1, batch):
            a, b = x[i : i + batch], x[i + 1 : i + batch + 1]
            a = a[: len(b)]
            flow = net(a, b, num_flow_updates=iters)[-1]
            mag = flow.square().sum(1).sqrt().numpy()
            out += [top_mean(m, 0.05) for m in mag]
    return out


@register
@dataclass
class VBenchDynamicDegree(BackboneTask):
    """VBench dynamic_degree (vbench/dynamic_degree.py) on RAFT: torchvision's RAFT-large with the
    raft-things weights (torchvision's C_T_V1 port), 20 refinements; frames subsampled every
    max(1, round(fps/8)); per consecutive pair the mean of the top 5 % flow magnitudes; a video is
    dynamic when at least round(4·N/16) pairs exceed max(1, 8/fps)·6·min(H, W)/256; the dimension
    is the fraction of dynamic videos. Needs raft_large_things of tasks/weights.toml; --allow-uncalibrated
    runs a random-init RAFT (numbers meaningless). Without the weights, vbench_dynamic_degree_proxy
    (Farneback flow, the same rule) is the fallback; each record's `backend` says which scored it."""

    name = "vbench_dynamic_degree"
    benchmark_dimension = "vbench:dynamic_degree"  # benchmark:dimension (the coverage table, the generator's prompts)
    weight_files = ("raft_large_things",)
    backend = f"RAFT-large from torchvision, raft-things weights ({file_of('raft_large_things')}), 20 refinements"
    fidelity = "faithful"
    version = "1"
    main_metric = "dynamic_degree"
    summary = "VBench dynamic degree (RAFT-large from torchvision; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "iters": "1", "num_frames": "3"}
    unit = "fraction dynamic"
    iters: int = field(default=20, metadata={"help": "RAFT refinement iterations (VBench: 20)"})
    batch_size: int = field(default=8, metadata={"help": "frame pairs per RAFT forward"})

    def build(self):
        return self.backbone(
            list(self.weight_files), lambda p: load_into(raft_large(), p[0], "", self.name) if p else raft_large()
        )

    def score(self, ref, frames):
        f = dynamic_frames(frames, ref.fps)
        return dynamic_degree_row(f, ref.fps, raft_pair_scores(self._net, f, self.iters, self.batch_size))
