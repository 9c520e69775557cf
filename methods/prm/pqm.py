from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.methods.prm._world import PQM_VARIANTS, WorldPRM, hard, pqm_loss, sigmoid
from harness.methods.prm.math_shepherd import SMOKE


@register
@dataclass
class PQM(WorldPRM):
    """Process Q-value Model — Li & Li 2024, "Process Reward Model with Q-Value Rankings"
    (arXiv:2410.11287); ζ = 4 and the read-out from WindyLee0822/Process_Q_Model.

    Trained on the synthetic world with Math-Shepherd hard-estimation step labels and the
    comparative ranking loss with margin ζ (default 4, `--zeta` in train_main.py) and anchor
    Q_0 = 0: for each correct step t, −log(e^{Q_t} / (e^{Q_t} + e^{Q_0} + Σ_{correct c<t} e^{Q_c} +
    Σ_{wrong w} e^{Q_w+ζ})), plus −log(e^{Q_0} / (e^{Q_0} + Σ_w e^{Q_w+ζ})) when a step is wrong,
    averaged. The step score is the raw Q-value (unbounded), aggregated by min as in the official
    BoN script; the vote weight of a solution is sigmoid(score), as in their SC+PQM.

    loss_variant: "paper" (default) is the ranking loss above, the paper's practical version.
    "official" is train_main.py's `ranking_loss` as released, which differs: its cumulative sum
    of the correct steps' e^{Q} is inclusive from the second step on (a correct step's own e^{Q_t}
    appears twice in its denominator, so that term never falls below log 2) and it adds 1e-5 to
    every denominator. The paper's form is the default because it is the stated objective and the
    official one reads as an indexing slip; choose "official" to train as the released code does."""

    name = "pqm"
    paper = "Process Reward Model with Q-Value Rankings (arXiv:2410.11287)"
    smoke_args = SMOKE
    probability_scores = False  # Q-values read from the value head (logits): unbounded, often negative
    ranges = {"zeta": "[0, inf)"}  # checked by params.build before any model loads
    zeta: float = field(default=4.0, metadata={"help": "margin ζ between wrong and correct steps"})
    loss_variant: str = field(
        default="paper", metadata={"help": "paper (the paper's ranking loss) or official (train_main.py as released)"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.loss_variant not in PQM_VARIANTS:
            raise ValueError(f"loss_variant must be one of {', '.join(PQM_VARIANTS)}")

    def label_params(self) -> dict:
        return {"zeta": self.zeta, "loss_variant": self.loss_variant}

    def loss(self, out, traj):
        return pqm_loss(out[1:, 0], hard(traj.q[1:]), self.zeta, self.loss_variant)

    def read(self, out):
        return out[1:, 0].tolist()

    def vote_weight(self, score: float) -> float:
        return sigmoid(score)
