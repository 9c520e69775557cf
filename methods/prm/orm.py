from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import register
from harness.methods.prm._world import WorldPRM, soft_bce
from harness.methods.prm.math_shepherd import SMOKE


@register
@dataclass
class ORM(WorldPRM):
    """Outcome reward model baseline — Cobbe et al. 2021, "Training Verifiers to Solve Math Word
    Problems" (arXiv:2110.14168), as the ORM baseline of PRM800K and PQM (BCE at the last token
    against the final answer's correctness).

    Trained on the synthetic world with the same network and data as the PRMs, but one label per
    solution: its final correctness, read at the last step's end. The solution score is that
    probability (one "step", so the aggregation parameter has no effect)."""

    name = "orm"
    paper = "Training Verifiers to Solve Math Word Problems (arXiv:2110.14168)"
    smoke_args = SMOKE

    def loss(self, out, traj):
        return soft_bce(out[-1:, 0], [float(traj.correct)])

    def read(self, out):
        return [float(torch.sigmoid(out[-1, 0]))]
