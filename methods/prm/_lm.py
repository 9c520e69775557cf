"""Verifiers that are small causal language models over the synthetic world's tokens (GenRM,
V-STaR): the shared network, per-token log-probabilities, the training data drawn from the world's
policy, and the fit/artifact/score-cache plumbing. The per-method files hold the losses and scores.

The LM is `_world.StepNet` with one output per vocabulary id (word buckets, digits, punctuation,
the step and problem-end markers), trained by next-token prediction. A solution y to problem x is
`_world.encode(x, steps)`: the problem's tokens, the problem-end marker, each step followed by the
step marker; log π(y|x) sums the log-probabilities of every token after the problem-end marker."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from harness.errors import UserError
from harness.methods.prm._common import PRMScorer
from harness.methods.prm._world import (
    PAD,
    VOCAB,
    StepNet,
    WorldPRM,
    cached_outputs,
    encode,
    pad,
    train_loop,
    world_data_hash,
    world_key,
)


def token_logprobs(net: StepNet, ids: torch.Tensor) -> torch.Tensor:
    """[B, T-1]: log p(ids[:, t] | ids[:, <t]) for t = 1..T-1 (full-vocabulary softmax)."""
    logp = torch.log_softmax(net(ids)[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None])[..., 0]


def sequence_logprob(net: StepNet, seqs: list[list[int]], starts: list[int]) -> torch.Tensor:
    """[B]: Σ_{t ≥ start} log p(seq[t] | seq[<t]) per sequence (pads excluded)."""
    ids = pad(seqs)
    lp = token_logprobs(net, ids)
    t = torch.arange(1, ids.shape[1])[None, :]
    keep = (t >= torch.tensor(starts)[:, None]) & (ids[:, 1:] != PAD)
    return (lp * keep).sum(-1)


@dataclass
class Sample:
    problem: str
    steps: list[str]
    correct: bool
    steps_ok: list[bool]  # per step: still on a right path (the world's step_ok)


def world_samples(world, problems: int, samples: int, seed: int) -> list[list[Sample]]:
    """Per training-side problem of `world` (a harness.mathworld.world module), `samples` policy
    solutions labelled by final-answer match (the generator's pool; the same seeds as the world
    PRMs' fits)."""
    policy = world.Policy()
    out = []
    for i in range(problems):
        prob = world.problem(i)
        pool = []
        for j in range(samples):
            steps = policy.sample(prob, world.sample_seed(prob, j, salt=1 + seed))
            ok = world.final_answer(prob, steps) == str(prob.answer)
            pool.append(Sample(prob.text, [s.text for s in steps], ok, world.step_ok(prob, steps)))
        out.append(pool)
    return out


@dataclass
class WorldLM(PRMScorer):
    """Base of the LM verifiers trained on the synthetic world: one score per solution (so `agg`
    has no effect), networks saved as safetensors, scores cached like the world PRMs'."""

    # the world PRMs' ranges, less their rollouts and backbone (checked by params.build before any model loads)
    ranges = {k: v for k, v in WorldPRM.ranges.items() if k not in ("rollouts", "backbone_lr", "logprob_lr")}
    problems: int = field(default=200, metadata={"help": "training problems (training-side seeds)"})
    samples: int = field(default=8, metadata={"help": "policy samples per training problem"})
    epochs: int = 4
    lr: float = 3e-3
    batch: int = 32
    d_model: int = 32
    layers: int = 2
    heads: int = 4
    # the world PRMs' context: world v1's evaluation pools hold solutions of up to 268 tokens, which
    # with the problem and GenRM's verification prompt do not fit 256 (tests/test_prm_verifiers.py)
    max_len: int = 512

    def __post_init__(self):
        super().__post_init__()
        if min(self.problems, self.samples, self.epochs, self.batch, self.d_model, self.layers, self.heads) < 1:
            raise ValueError("problems, samples, epochs, batch, d_model, layers and heads must be positive")
        self._nets: dict[str, StepNet] = {}
        self._key: str | None = None

    def needs_fit(self, lm, ctx) -> bool:
        return True

    def fit_params(self, lm, ctx) -> dict:
        keep = ("problems", "samples", "epochs", "lr", "batch", "d_model", "layers", "heads", "max_len")
        return dict({k: getattr(self, k) for k in keep}, **self.label_params(), seed=ctx.seed, **world_key(ctx))

    def label_params(self) -> dict:
        return {}

    def fit_data_hash(self, lm, ctx) -> str:
        return world_data_hash(ctx, self.problems)

    def new_net(self) -> StepNet:
        return StepNet(self.d_model, self.layers, self.heads, self.max_len, VOCAB)

    def reserved(self, steps: list[str]) -> int:
        """Positions kept free after the solution (a verification prompt)."""
        return 0

    def encode(self, problem: str, steps: list[str]) -> tuple[list[int], int]:
        """(ids, index of the first solution token); a long problem is cut from its start."""
        ids, marks = encode(problem, steps, self.max_len - self.reserved(steps))
        return ids, marks[0] + 1

    def train(self, net: StepNet, n_items: int, batch_loss, rng: random.Random, log, epochs: int | None = None):
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=0.01)
        return train_loop(opt, n_items, batch_loss, epochs or self.epochs, self.batch, rng, log, self.name)

    def finish_fit(self, nets: dict[str, StepNet], payload: dict):
        self._nets = {k: n.eval() for k, n in nets.items()}
        states = {k: {n: v.contiguous() for n, v in net.state_dict().items()} for k, net in nets.items()}

        def write(folder):
            from safetensors.torch import save_file

            for k, state in states.items():
                save_file(state, str(folder / f"{k}.safetensors"))

        payload["parameters"] = sum(p.numel() for p in next(iter(nets.values())).parameters())
        return payload, write

    def use_artifact(self, payload, folder) -> None:
        from safetensors.torch import load_file

        self._key = payload.get("key")
        for path in sorted(folder.glob("*.safetensors")):
            net = self.new_net()
            net.load_state_dict(load_file(str(path)))
            self._nets[path.stem] = net.eval()

    def net(self, which: str) -> StepNet:
        if which not in self._nets:
            raise UserError(f"{self.name} has no trained network: run `harness fit --method {self.name}` first")
        return self._nets[which]

    def score(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        self.net(self.main_net)  # a clear error before anything runs
        outs = cached_outputs(
            self.name, self._key, problem, solutions, lambda: self.solution_scores(problem, solutions)
        )
        return [[float(o[0])] for o in outs]

    def solution_scores(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        raise TypeError(f"{type(self).__name__} must define solution_scores()")  # abstract


def weighted_nll(net: StepNet, seqs: list[list[int]], weights: list[list[float]]) -> torch.Tensor:
    """Σ w_t·(−log p(seq[t] | seq[<t])) / Σ w_t over a batch; weights[i][t] for t ≥ 1 (index 0
    unused): next-token SFT restricted to the tokens each sequence trains on."""
    ids = pad(seqs)
    w = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for i, ws in enumerate(weights):
        w[i, : len(ws) - 1] = torch.tensor(ws[1:], dtype=torch.float32)
    lp = token_logprobs(net, ids)
    return -(lp * w).sum() / w.sum().clamp_min(1.0)
