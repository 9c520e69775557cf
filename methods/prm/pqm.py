from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.methods.prm._world import WorldPRM, hard, pqm_loss, sigmoid
from harness.methods.prm.math_shepherd import SMOKE


@register
@dataclass
class PQM(WorldPRM):
    """Process Q-value Model — Li & Li 2024, "Process Reward Model with Q-Value Rankings"
    (arXiv:2410.11287); loss and defaults from WindyLee0822/Process_Q_Model (anchors-prm §4.4).

    Trained on the synthetic world with Math-Shepherd hard-estimation step labels and the
    comparative ranking loss with margin ζ (default 4) and anchor Q_0 = 0; the step score is the
    raw Q-value (unbounded), aggregated by min as in the official BoN script; the vote weight of a
    solution is sigmoid(score), as in their SC+PQM."""

    name = "pqm"
    paper = "Process Reward Model with Q-Value Rankings (arXiv:2410.11287)"
    smoke_args = SMOKE
    ranges = {"zeta": "[0, inf)"}  # checked by params.build before any model loads
    zeta: float = field(default=4.0, metadata={"help": "margin ζ between wrong and correct steps"})

    def label_params(self) -> dict:
        return {"zeta": self.zeta}

    def loss(self, out, traj):
        return pqm_loss(out[1:, 0], hard(traj.q[1:]), self.zeta)

    def read(self, out):
        return out[1:, 0].tolist()

    def vote_weight(self, score: float) -> float:
        return sigmoid(score)
