from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
from torch import nn

from harness import mathworld
from harness.registry import register
from harness.methods.prm._lm import WorldLM, sequence_logprob, weighted_nll, world_samples
from harness.methods.prm._world import sigmoid, train_loop
from harness.methods.prm.math_shepherd import SMOKE


def dpo_loss(pol_w: torch.Tensor, ref_w: torch.Tensor, pol_l: torch.Tensor, ref_l: torch.Tensor, beta: float):
    """Mean over pairs of −log σ(β[(log π(y⁺|x) − log π_ref(y⁺|x)) − (log π(y⁻|x) − log π_ref(y⁻|x))])."""
    return -nn.functional.logsigmoid(beta * ((pol_w - ref_w) - (pol_l - ref_l))).mean()


@register
@dataclass
class VSTaR(WorldLM):
    """V-STaR's verifier — Hosseini et al. 2024, "V-STaR: Training Verifiers for Self-Taught
    Reasoners" (arXiv:2402.06457; no official code), anchors-round2 §9.

    On the synthetic world the generator is the world's stochastic policy, not an LM, so there is
    one round of the loop: G_SFT is a small causal LM (methods/prm/_lm.py) fine-tuned on D_SFT =
    the world's error-free reference solutions of the training problems (`sft_epochs`), and it is
    both π_ref and the verifier's initialisation (π_ref = the SFT model is unverified). The policy
    samples `samples` solutions per training problem (k = 16, unverified), labelled by final
    answer; every (correct ≻ incorrect) pair of the same problem, at most `max_pairs` per problem
    (this project's cap for the CPU budget), trains π_V with DPO:
    L = −log σ(β[log π_V(y⁺|x)/π_ref(y⁺|x) − log π_V(y⁻|x)/π_ref(y⁻|x)]), β = `beta` = 0.1 (the
    reference leaves the paper's β unverified; 0.1 is the DPO paper's common setting).
    Score (`score`): reward = β·log(π_V(y|x)/π_ref(y|x)), the DPO implicit reward (default), or
    likelihood = log π_V(y|x); both carry a length bias (sums over the solution's tokens)."""

    name = "vstar"
    paper = "V-STaR: Training Verifiers for Self-Taught Reasoners (arXiv:2402.06457)"
    smoke_args = {k: v for k, v in SMOKE.items() if k != "rollouts"} | {
        "samples": "6",
        "sft_epochs": "1",
        "max_pairs": "4",
    }
    ranges = WorldLM.ranges | {"beta": "(0, inf)", "sft_epochs": "[1, inf)", "max_pairs": "[1, inf)"}
    main_net = "verifier"
    samples: int = field(default=16, metadata={"help": "k: policy samples per training problem"})
    epochs: int = field(default=2, metadata={"help": "DPO epochs over the pairs"})
    beta: float = field(default=0.1, metadata={"help": "β of DPO (and of the implicit reward)"})
    sft_epochs: int = field(default=30, metadata={"help": "epochs of SFT on the reference solutions (π_ref)"})
    max_pairs: int = field(default=32, metadata={"help": "at most this many (correct, incorrect) pairs per problem"})
    score_as: str = field(default="reward", metadata={"help": "reward (β log π_V/π_ref) or likelihood (log π_V)"})

    def __post_init__(self):
        super().__post_init__()
        if self.score_as not in ("reward", "likelihood"):
            raise ValueError("score_as must be reward or likelihood")

    def label_params(self) -> dict:
        return {"beta": self.beta, "sft_epochs": self.sft_epochs, "max_pairs": self.max_pairs}

    def fit(self, lm, ctx, log=print):
        torch.manual_seed(ctx.seed)
        rng = random.Random(ctx.seed)
        world = mathworld.world(ctx.world_version)
        demos = [self.encode(p.text, world.reference_solution(p)) for p in map(world.problem, range(self.problems))]
        ref = self.new_net()
        weights = [[0.0] * start + [1.0] * (len(ids) - start) for ids, start in demos]
        sft_opt = torch.optim.AdamW(ref.parameters(), lr=self.lr, weight_decay=0.01)
        sft_trace = train_loop(
            sft_opt,
            len(demos),
            lambda c: weighted_nll(ref, [demos[i][0] for i in c], [weights[i] for i in c]),
            self.sft_epochs,
            self.batch,
            rng,
            log,
            "vstar sft",
        )
        ref.eval()
        pairs = []  # ((ids⁺, start⁺), (ids⁻, start⁻))
        for pool in world_samples(world, self.problems, self.samples, ctx.seed):
            good = [self.encode(s.problem, s.steps) for s in pool if s.correct]
            bad = [self.encode(s.problem, s.steps) for s in pool if not s.correct]
            found = [(g, b) for g in good for b in bad]
            rng.shuffle(found)
            pairs += found[: self.max_pairs]
        with torch.no_grad():  # π_ref's log-probabilities are fixed: compute them once
            ref_lp = [
                sequence_logprob(ref, [p[k][0] for p in pairs[b : b + 64]], [p[k][1] for p in pairs[b : b + 64]])
                for k in (0, 1)
                for b in range(0, len(pairs), 64)
            ]
        half = len(ref_lp) // 2
        ref_w, ref_l = torch.cat(ref_lp[:half]) if pairs else None, torch.cat(ref_lp[half:]) if pairs else None
        pol = self.new_net()
        pol.load_state_dict(ref.state_dict())

        def batch_loss(chunk):
            lp = [
                sequence_logprob(pol, [pairs[i][k][0] for i in chunk], [pairs[i][k][1] for i in chunk]) for k in (0, 1)
            ]
            idx = torch.tensor(chunk)
            return dpo_loss(lp[0], ref_w[idx], lp[1], ref_l[idx], self.beta)

        log(f"vstar: {len(pairs)} DPO pairs from {self.problems} problems x {self.samples} samples")
        trace = self.train(pol, len(pairs), batch_loss, rng, log) if pairs else []
        payload = {"pairs": len(pairs), "sft_loss_trace": sft_trace, "loss_trace": trace}
        return self.finish_fit({"verifier": pol.eval(), "ref": ref}, payload)

    def vote_weight(self, score: float) -> float:
        # reward: σ(r), the Bradley–Terry probability of beating a zero-reward solution; likelihood: π_V(y|x)
        return sigmoid(score) if self.score_as == "reward" else math.exp(min(score, 0.0))

    def solution_scores(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        enc = [self.encode(problem, steps) for steps in solutions]
        seqs, starts = [e[0] for e in enc], [e[1] for e in enc]
        with torch.no_grad():
            pol = sequence_logprob(self.net("verifier"), seqs, starts)
            if self.score_as == "likelihood":
                return [[float(x)] for x in pol]
            ref = sequence_logprob(self.net("ref"), seqs, starts)
        return [[float(x)] for x in self.beta * (pol - ref)]
