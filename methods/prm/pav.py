from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.prm._world import WorldPRM, best_of_k, soft_bce
from harness.methods.prm.math_shepherd import SMOKE


def pav_steps(q_pi: list[float], q_mu: list[float], alpha: float) -> list[float]:
    """Step k's effective reward Q^π(k) + α·(Q^μ(k) − Q^μ(k−1)); index 0 is the problem alone."""
    return [q_pi[k] + alpha * (q_mu[k] - q_mu[k - 1]) for k in range(1, len(q_pi))]


@register
@dataclass
class PAV(WorldPRM):
    """Process advantage verifier — Setlur et al. 2024, "Rewarding Progress: Scaling Automated
    Process Verifiers for LLM Reasoning" (arXiv:2410.08146); anchors-prm §4.3 (no official code).

    Two heads trained with soft BCE on Monte Carlo values of every prefix (the problem alone and
    after each step): Q^π = q̂ (the policy's success rate) and the Best-of-K prover's
    Q^μ = 1 − (1 − q̂)^K. Step score = Q^π(k) + α·A^μ(k) with the advantage
    A^μ(k) = Q^μ(k) − Q^μ(k−1). K = 4 (the paper's best range); α = 1 is this project's choice
    (the paper tunes it). Vote weight: the score's range [−α, 1 + α] mapped affinely onto [0, 1]
    (clipping at 0 instead zeroed whole answer classes)."""

    name = "pav"
    paper = "Rewarding Progress: Scaling Automated Process Verifiers for LLM Reasoning (arXiv:2410.08146)"
    smoke_args = SMOKE
    outputs = 2
    probability_scores = False  # Q^π + α·A^μ lies in [−α, 1 + α]
    ranges = {"prover_k": "[1, inf)", "alpha": "[0, inf)"}  # checked by params.build before any model loads
    prover_k: int = field(default=4, metadata={"help": "K of the Best-of-K prover"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the prover advantage"})

    def __post_init__(self):
        super().__post_init__()
        if self.prover_k < 1:
            raise ValueError("prover_k must be at least 1")

    def label_params(self) -> dict:
        return {"prover_k": self.prover_k}  # alpha only changes the read-out, not the fit

    def loss(self, out, traj):
        return soft_bce(out[:, 0], traj.q) + soft_bce(out[:, 1], best_of_k(traj.q, self.prover_k))

    def read(self, out):
        p = torch.sigmoid(out)
        return pav_steps(p[:, 0].tolist(), p[:, 1].tolist(), self.alpha)

    def vote_weight(self, score: float) -> float:
        # Q^π ∈ [0, 1] and A^μ ∈ [-1, 1]: map the range [-α, 1 + α] affinely onto [0, 1]
        return min(1.0, max(0.0, (score + self.alpha) / (1 + 2 * self.alpha)))
