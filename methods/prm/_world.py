"""PRMs trained on the synthetic math world (harness.mathworld): shared data collection, label
construction, the network and the fit stage. The per-method files choose targets, loss and read-out.

Data (anchors-prm §4): the world's policy samples `samples` solutions for each of `problems`
training-side problems; at every prefix (the problem alone, then after each step) `rollouts`
Monte Carlo completions by the same policy give q̂ = the fraction reaching the gold answer (the
final prefix of a finished solution is its own correctness). From q̂: Math-Shepherd hard
estimation HE = 1[q̂ > 0] and soft estimation SE = q̂; PAV's Best-of-K prover value
Q^μ = 1 − (1 − q̂)^K; PQM's step labels = HE; the ORM's label = the final correctness.

Network: a character-level causal Transformer (bytes, a marker token after the problem and after
each step, learned positions); heads read at the markers, so the score of step k depends only on
the problem and steps 1..k (what PRM-guided search needs)."""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

import torch
from torch import nn

from harness import mathworld
from harness.errors import UserError
from harness.methods.prm._common import PRMScorer
from harness.records import canonical

PAD, STEP, PROBLEM_END, VOCAB = 0, 129, 130, 131


def encode(problem: str, steps: list[str], max_len: int) -> tuple[list[int], list[int]]:
    """Byte ids and the marker positions [after the problem, after step 1, ...]. A problem too long
    to fit is cut from its start; steps are never cut."""
    body = []
    for s in steps:
        body += [min(b, 127) + 1 for b in s.encode("utf-8", "replace")] + [STEP]
    head = [min(b, 127) + 1 for b in problem.encode("utf-8", "replace")][-(max_len - 1 - len(body)):] if len(body) < max_len - 1 else None
    if head is None:
        raise UserError(f"a solution of {len(body)} bytes does not fit the PRM's max_len {max_len}")
    ids = head + [PROBLEM_END] + body
    return ids, [i for i, t in enumerate(ids) if t in (STEP, PROBLEM_END)]


class StepNet(nn.Module):
    def __init__(self, d_model: int, layers: int, heads: int, max_len: int, outputs: int):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        causal = torch.triu(torch.ones((t, t), dtype=torch.bool, device=ids.device), diagonal=1)
        return self.head(self.norm(self.body(x, mask=causal, src_key_padding_mask=ids == PAD)))


@dataclass
class Trajectory:
    problem: str
    steps: list[str]
    q: list[float]        # q̂ at every prefix: [problem only, after step 1, ..., after step K]
    correct: bool


def mc_values(prob, steps, policy, rollouts: int, rng: random.Random, completer=None) -> list[float]:
    """q̂ per prefix by `rollouts` completions (completer(prob, prefix, rng) -> finished steps)."""
    completer = completer or policy.complete
    gold = str(prob.answer)
    out = []
    for k in range(len(steps) + 1):
        if k == len(steps) and k == len(prob.ops):
            out.append(float(mathworld.final_answer(prob, steps) == gold))
            continue
        hits = sum(mathworld.final_answer(prob, completer(prob, steps[:k], rng)) == gold for _ in range(rollouts))
        out.append(hits / rollouts)
    return out


def hard(q: list[float]) -> list[float]:
    return [1.0 if v > 0 else 0.0 for v in q]


def best_of_k(q: list[float], k: int) -> list[float]:
    return [1 - (1 - v) ** k for v in q]


def pqm_loss(qs: torch.Tensor, labels: list[float], zeta: float) -> torch.Tensor:
    """PQM's comparative loss for one trajectory (anchors §4.4): every correct step must outrank
    the earlier correct steps and the anchor Q_0 = 0, every wrong step sits ζ below; plus the anchor
    term when there are wrong steps. Mean over the counted terms."""
    correct = [i for i, y in enumerate(labels) if y >= 0.5]
    wrong = [i for i, y in enumerate(labels) if y < 0.5]
    zero = qs.new_zeros(())
    wrong_mass = torch.logsumexp(qs[wrong] + zeta, 0) if wrong else None
    terms = []
    for j, t in enumerate(correct):
        parts = [qs[t], zero] + [qs[c] for c in correct[:j]] + ([wrong_mass] if wrong else [])
        terms.append(torch.logsumexp(torch.stack(parts), 0) - qs[t])
    if wrong:
        terms.append(torch.logsumexp(torch.stack([zero, wrong_mass]), 0))
    return torch.stack(terms).mean() if terms else qs.sum() * 0


@dataclass
class WorldPRM(PRMScorer):
    """Base of the PRMs trained on the synthetic world (see the module docstring); subclasses set
    `outputs`, `loss` and `read`."""
    outputs = 1
    problems: int = field(default=400, metadata={"help": "training problems (training-side seeds)"})
    samples: int = field(default=8, metadata={"help": "policy samples per training problem"})
    rollouts: int = field(default=8, metadata={"help": "Monte Carlo completions per prefix"})
    epochs: int = 8
    lr: float = 2e-3
    batch: int = 32
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    max_len: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if min(self.problems, self.samples, self.rollouts, self.epochs, self.batch, self.d_model, self.layers) < 1:
            raise ValueError("problems, samples, rollouts, epochs, batch, d_model and layers must be positive")
        self._net: StepNet | None = None

    # -- fit hooks ------------------------------------------------------------------------------
    def needs_fit(self, lm, ctx) -> bool:
        return True

    def fit_params(self, lm, ctx) -> dict:
        keep = ("problems", "samples", "rollouts", "epochs", "lr", "batch", "d_model", "layers", "heads", "max_len")
        return dict({k: getattr(self, k) for k in keep}, **self.label_params(), seed=ctx.seed)

    def label_params(self) -> dict:
        return {}

    def fit_data_hash(self, lm, ctx) -> str:
        policy = mathworld.Policy()
        return hashlib.sha256(canonical({"world": "harness.mathworld", "policy": policy.__dict__,
                                         "problem_seeds": [0, self.problems]}).encode()).hexdigest()

    def _net_new(self) -> StepNet:
        return StepNet(self.d_model, self.layers, self.heads, self.max_len, self.outputs)

    def fit(self, lm, ctx, log=print):
        torch.manual_seed(ctx.seed)
        policy, rng = mathworld.Policy(), random.Random(ctx.seed)
        data = []
        for i in range(self.problems):
            prob = mathworld.problem(i)
            for j in range(self.samples):
                steps = policy.sample(prob, mathworld.sample_seed(prob, j, salt=1 + ctx.seed))
                q = mc_values(prob, steps, policy, self.rollouts, rng)
                data.append(Trajectory(prob.text, [s.text for s in steps], q,
                                       mathworld.final_answer(prob, steps) == str(prob.answer)))
        log(f"{self.name}: {len(data)} trajectories, {sum(len(t.steps) for t in data)} steps, "
            f"policy accuracy {sum(t.correct for t in data) / len(data):.3f}")
        net = self._net_new()
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=0.01)
        encoded = [encode(t.problem, t.steps, self.max_len) for t in data]
        trace = []
        for epoch in range(self.epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            total = 0.0
            for b in range(0, len(order), self.batch):
                chunk = order[b:b + self.batch]
                out = net(_pad([encoded[i][0] for i in chunk]))
                loss = torch.stack([self.loss(out[r, encoded[i][1]], data[i]) for r, i in enumerate(chunk)]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(chunk)
            trace.append(total / len(order))
            log(f"{self.name}: epoch {epoch + 1}/{self.epochs} loss {trace[-1]:.4f}")
        self._net = net.eval()
        state = {k: v.contiguous() for k, v in net.state_dict().items()}

        def write(folder):
            from safetensors.torch import save_file
            save_file(state, str(folder / "prm.safetensors"))
        return {"trajectories": len(data), "loss_trace": trace,
                "policy_accuracy": sum(t.correct for t in data) / len(data),
                "parameters": sum(p.numel() for p in net.parameters())}, write

    def use_artifact(self, payload, folder) -> None:
        from safetensors.torch import load_file
        net = self._net_new()
        net.load_state_dict(load_file(str(folder / "prm.safetensors")))
        self._net = net.eval()

    # -- scoring --------------------------------------------------------------------------------
    def outputs_at_markers(self, problem: str, solutions: list[list[str]]) -> list[torch.Tensor]:
        """Per solution: the head outputs [K + 1, outputs] at the problem end and every step end."""
        if self._net is None:
            raise UserError(f"{self.name} has no trained network: run `harness fit --method {self.name}` first")
        enc = [encode(problem, steps, self.max_len) for steps in solutions]
        out = []
        with torch.no_grad():
            for b in range(0, len(enc), 64):
                chunk = enc[b:b + 64]
                res = self._net(_pad([e[0] for e in chunk]))
                out += [res[r, e[1]] for r, e in enumerate(chunk)]
        return out

    def score(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        return [self.read(o) for o in self.outputs_at_markers(problem, solutions)]

    def read(self, out: torch.Tensor) -> list[float]:
        """Step scores from the outputs at [problem end, step 1, ..., step K]."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, traj: Trajectory) -> torch.Tensor:
        raise NotImplementedError


def _pad(seqs: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [PAD] * (width - len(s)) for s in seqs], dtype=torch.long)


def soft_bce(logits: torch.Tensor, targets: list[float]) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(targets, dtype=logits.dtype))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -50 else 0.0

