from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import torch

from harness import mathworld
from harness.registry import register
from harness.methods.prm._lm import Sample, WorldLM, weighted_nll, world_samples
from harness.methods.prm._world import pad, tokens
from harness.methods.prm.math_shepherd import SMOKE

VERIFY_PROMPT = tokens("Is the answer correct (Yes/No)?")
YES, NO = tokens("Yes")[0], tokens("No")[0]
CHECK, OK, OFF, STOP = tokens("Check:"), tokens("ok")[0], tokens("off")[0], tokens(".")[0]


def grader_rationale(s: Sample) -> list[int]:
    """The reference-guided grader's rationale (the paper's stronger LLM shown the reference
    solution; here the world's own step labels, harness.mathworld's step_ok: in version 1 the
    amount the step wrote equals the reference amount): "Check:" then per step "ok" or "off", then
    ".". Its verdict (last step ok) always
    equals the final-answer label, so the paper's filter (keep rationales whose verdict matches the
    label) keeps all of them."""
    return CHECK + [OK if ok else OFF for ok in s.steps_ok] + [STOP]


def yes_probability(logits: torch.Tensor, normalize: str) -> torch.Tensor:
    """P("Yes") from next-token logits [..., vocab]: over the whole vocabulary, or renormalised
    over {Yes, No}."""
    if normalize == "yes_no":
        return torch.softmax(logits[..., [YES, NO]].float(), -1)[..., 0]
    return torch.softmax(logits.float(), -1)[..., YES]


@register
@dataclass
class GenRM(WorldLM):
    """Generative verifier — Zhang et al. 2024, "Generative Verifiers: Reward Modeling as
    Next-Token Prediction" (arXiv:2408.15240; no official code), anchors-round2 §8.

    A small causal LM over the world's tokens (methods/prm/_lm.py) trained by next-token
    prediction: on D_verify (the policy's `samples` solutions per training problem, then "Is the
    answer correct (Yes/No)?" and the final-answer label "Yes"/"No"; GenRM-CoT: the grader's
    rationale before the question, trained on as well) plus λ·SFT on the correct solutions
    (the paper's L = L_SFT(D_verify) + λ·L_SFT(D_correct); λ = `aux_weight` = 1 is this
    project's choice, the reference gives only λ > 0). Score (direct): r = P("Yes" | x, y, prompt)
    over the full vocabulary (`normalize=yes_no` renormalises over Yes/No; the reference leaves
    the choice open). GenRM-CoT (`cot`): r = the mean of P(Yes | x, y, v_i, prompt) over `votes`
    rationales v_i sampled at `temperature` (mean probabilities, not hard votes); K = 32, the
    largest the paper shows (its default is unverified). No reference solution at test time."""

    name = "genrm"
    paper = "Generative Verifiers: Reward Modeling as Next-Token Prediction (arXiv:2408.15240)"
    smoke_args = {k: v for k, v in SMOKE.items() if k != "rollouts"} | {"cot": "true", "votes": "2"}
    ranges = WorldLM.ranges | {"votes": "[1, inf)", "aux_weight": "[0, inf)", "temperature": "(0, inf)"}
    main_net = "verifier"
    cot: bool = field(default=False, metadata={"help": "GenRM-CoT: sample rationales and average P(Yes)"})
    votes: int = field(default=32, metadata={"help": "GenRM-CoT: K sampled rationales per solution"})
    temperature: float = field(default=1.0, metadata={"help": "GenRM-CoT: rationale sampling temperature"})
    aux_weight: float = field(default=1.0, metadata={"help": "λ of the solution-generation SFT loss"})
    normalize: str = field(default="vocab", metadata={"help": "P(Yes) over the full vocabulary (vocab) or yes_no"})

    def __post_init__(self):
        super().__post_init__()
        if self.normalize not in ("vocab", "yes_no"):
            raise ValueError("normalize must be vocab or yes_no")

    def label_params(self) -> dict:
        return {"cot": self.cot, "aux_weight": self.aux_weight}

    def reserved(self, steps: list[str]) -> int:
        # the rationale ("Check:", a mark per step, "."), the question and the verdict; room for 7
        # marks at least (world version 1 writes at most 6 steps), more for longer solutions
        return len(CHECK) + max(8, len(steps) + 1) + len(VERIFY_PROMPT) + 1

    def fit(self, lm, ctx, log=print):
        torch.manual_seed(ctx.seed)
        rng = random.Random(ctx.seed)
        pools = world_samples(mathworld.world(ctx.world_version), self.problems, self.samples, ctx.seed)
        items = []  # (ids, per-token weights, is_verify)
        for s in (s for pool in pools for s in pool):
            ids, start = self.encode(s.problem, s.steps)
            rationale = grader_rationale(s) if self.cot else []
            verify = ids + rationale + VERIFY_PROMPT + [YES if s.correct else NO]
            w = [0.0] * len(ids) + [1.0] * len(rationale) + [0.0] * len(VERIFY_PROMPT) + [1.0]
            items.append((verify, w, True))
            if s.correct and self.aux_weight > 0:
                items.append((ids, [0.0] * start + [1.0] * (len(ids) - start), False))
        net = self.new_net()

        def batch_loss(chunk):
            loss = 0.0
            for kind, weight in ((True, 1.0), (False, self.aux_weight)):
                part = [items[i] for i in chunk if items[i][2] == kind]
                if part:
                    loss = loss + weight * weighted_nll(net, [p[0] for p in part], [p[1] for p in part])
            return loss

        n_correct = sum(s.correct for pool in pools for s in pool)
        log(f"genrm: {len(items)} sequences ({sum(map(len, pools))} to verify, {n_correct} correct)")
        trace = self.train(net, len(items), batch_loss, rng, log)
        return self.finish_fit({"verifier": net}, {"sequences": len(items), "loss_trace": trace})

    def solution_scores(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        net = self.net("verifier")
        heads = [self.encode(problem, steps)[0] for steps in solutions]
        if not self.cot:
            return [[p] for p in self.verify(net, heads)]
        gen = torch.Generator().manual_seed(zlib.crc32(problem.encode()))
        prefixes = [h + CHECK for h in heads for _ in range(self.votes)]
        rationales = self.sample_rationales(net, prefixes, max(len(s) for s in solutions) + 1, gen)
        probs = self.verify(net, rationales)
        return [[sum(probs[i * self.votes : (i + 1) * self.votes]) / self.votes] for i in range(len(solutions))]

    def verify(self, net, seqs: list[list[int]]) -> list[float]:
        """P(Yes) after each sequence followed by the verification question."""
        out = []
        with torch.no_grad():
            for b in range(0, len(seqs), 256):
                chunk = [s + VERIFY_PROMPT for s in seqs[b : b + 256]]
                h = net.hidden(pad(chunk))
                last = h[torch.arange(len(chunk)), torch.tensor([len(s) - 1 for s in chunk])]
                out += yes_probability(net.head(last), self.normalize).tolist()
        return out

    def sample_rationales(self, net, prefixes: list[list[int]], max_new: int, gen) -> list[list[int]]:
        """Continue each prefix by sampling (softmax at `temperature`) until "." or max_new tokens."""
        seqs, live = [list(p) for p in prefixes], list(range(len(prefixes)))
        with torch.no_grad():
            for _ in range(max_new):
                if not live:
                    break
                h = net.hidden(pad([seqs[i] for i in live]))
                last = h[torch.arange(len(live)), torch.tensor([len(seqs[i]) - 1 for i in live])]
                probs = torch.softmax(net.head(last).float() / self.temperature, -1)
                picks = torch.multinomial(probs, 1, generator=gen)[:, 0].tolist()
                for i, t in zip(live, picks):
                    seqs[i].append(t)
                live = [i for i in live if seqs[i][-1] != STOP]
        return seqs
