from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.prm._world import WorldPRM, hard, soft_bce

SMOKE = {"problems": "3", "samples": "2", "rollouts": "2", "epochs": "1", "d_model": "16", "layers": "1"}


@register
@dataclass
class MathShepherd(WorldPRM):
    """Math-Shepherd — Wang et al. 2024, "Math-Shepherd: Verify and Reinforce LLMs Step-by-step
    without Human Annotations" (arXiv:2312.08935); labels as in anchors-prm §4.1.

    Trained on the synthetic world (methods/prm/_world.py): at each step k, `rollouts` completions by
    the policy; hard estimation labels the step 1 if any completion reaches the gold answer, soft
    estimation with the fraction that does. Binary cross-entropy (soft targets for SE) on the
    step-end outputs; the step score is sigmoid(output) = P(step good). Paper defaults: N = 8
    completions, min aggregation."""

    name = "math_shepherd"
    paper = "Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human Annotations (arXiv:2312.08935)"
    smoke_args = SMOKE
    estimation: str = field(default="hard", metadata={"help": "hard (any completion correct) or soft (fraction)"})

    def __post_init__(self):
        super().__post_init__()
        if self.estimation not in ("hard", "soft"):
            raise ValueError("estimation must be hard or soft")

    def label_params(self) -> dict:
        return {"estimation": self.estimation}

    def loss(self, out, traj):
        q = traj.q[1:]
        return soft_bce(out[1:, 0], hard(q) if self.estimation == "hard" else q)

    def read(self, out):
        return torch.sigmoid(out[1:, 0]).tolist()
