"""PRMs trained on the synthetic math world (harness.mathworld): shared data collection, label
construction, the network and the fit stage. The per-method files choose targets, loss and read-out.

Data (anchors-prm §4): the world's policy samples `samples` solutions for each of `problems`
training-side problems; at every prefix (the problem alone, then after each step) `rollouts`
Monte Carlo completions by the same policy give q̂ = the fraction reaching the gold answer (the
final prefix of a finished solution, or of one the policy gave up, is its own correctness). From q̂: Math-Shepherd hard
estimation HE = 1[q̂ > 0] and soft estimation SE = q̂; PAV's Best-of-K prover value
Q^μ = 1 − (1 − q̂)^K; PQM's step labels = HE; the ORM's label = the final correctness.

Network: a small causal Transformer (d 32, 2 layers by default; learned absolute positions, or
rotary ones with positions=rope) over words (hashed), digits and punctuation, with a marker token
after the problem and after each step; heads read at the markers, so the score of step k depends
only on what precedes it (what PRM-guided search needs). By default
it reads the steps only (`read_problem=false`): the steps quote their cues, and on this shared
2-core machine the problem text doubled the cost; errors that misquote the problem (half of the
misreads) are then invisible to it."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import math
import os
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from harness import mathworld
from harness.errors import UserError
from harness.methods.prm._common import PRMScorer
from harness.records import canonical, sha256_text

PAD, STEP, PROBLEM_END, WORD_BUCKETS = 0, 1, 2, 1024
_CHARS = "0123456789" + "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())
VOCAB = 3 + len(_CHARS) + WORD_BUCKETS
_TOKEN = re.compile(r"\d|[A-Za-z]+|\S")


def tokens(text: str) -> list[int]:
    """Digits and punctuation one id each; words hashed (crc32) into WORD_BUCKETS ids. Numbers are
    digit sequences, so the network can learn digit-wise arithmetic checks."""
    out = []
    for t in _TOKEN.findall(text):
        i = _CHARS.find(t) if len(t) == 1 else -1
        out.append(3 + i if i >= 0 else 3 + len(_CHARS) + zlib.crc32(t.lower().encode()) % WORD_BUCKETS)
    return out


def encode(problem: str, steps: list[str], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and the marker positions [after the problem, after step 1, ...]. A problem too
    long to fit is cut from its start; steps are never cut."""
    body = []
    for s in steps:
        body += tokens(s) + [STEP]
    if len(body) >= max_len - 1:
        raise UserError(f"a solution of {len(body)} tokens does not fit the PRM's max_len {max_len}")
    ids = tokens(problem)[-(max_len - 1 - len(body)) :] + [PROBLEM_END] + body
    return ids, [i for i, t in enumerate(ids) if t in (STEP, PROBLEM_END)]


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (RoFormer, arXiv:2104.09864) of [B, H, T, D] queries or keys:
    the dot product of two rotated vectors depends on their positions' difference only."""
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=x.dtype, device=x.device) / half)
    ang = torch.arange(x.shape[2], dtype=x.dtype, device=x.device)[:, None] * freqs[None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], -1)


class _Block(nn.Module):
    """Pre-norm causal self-attention + MLP (right padding: real positions never see the pads);
    rope: rotary positions on the queries and keys."""

    def __init__(self, d: int, heads: int, rope: bool = False):
        super().__init__()
        self.heads, self.rope = heads, rope
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = rotary(q), rotary(k)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.n2(x))


POSITIONS = ("learned", "rope")


class StepNet(nn.Module):
    """positions: "learned" absolute embeddings (up to max_len), or "rope" rotary positions in
    every attention layer (relative: a check learnt at one place of a solution holds at others)."""

    def __init__(self, d_model: int, layers: int, heads: int, max_len: int, outputs: int, positions: str = "learned"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}")
        self.tok = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.pos = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.blocks = nn.ModuleList(_Block(d_model, heads, positions == "rope") for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, outputs)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The final normed states (the head applied where wanted: a language model's vocabulary
        head at every position costs far more than the trunk)."""
        x = self.tok(ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(ids))


class BackboneNet(nn.Module):
    """A pretrained causal LM's trunk (transformers' AutoModel, no vocabulary head) with a linear
    head on its last hidden states: the papers' PRMs are their policy's LM with a value head, fine-
    tuned whole (Math-Shepherd on Mistral-7B/DeepSeek-Math, PQM and PAV likewise). Math-Shepherd
    reads P('+') against P('-') from the vocabulary head at its tag: a sigmoid of (e₊ − e₋)·h, the
    same function class as this linear head (PQM's is a scalar value head, as here); only the
    initialisation differs. Right padding and causal attention: a marker's output never sees the
    pads or later steps."""

    def __init__(self, trunk: nn.Module, outputs: int, logprob_inputs: int = 0):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.config.hidden_size, outputs)
        nn.init.zeros_(self.head.weight)  # starts at logit 0 for every step: the trunk's features, unbiased
        nn.init.zeros_(self.head.bias)
        # read_logprobs (a documented deviation): a second linear head on the LM's token
        # log-probabilities at each marker (least_logprobs), added to the first; zero-initialised too
        self.logprob_head = nn.Linear(logprob_inputs, outputs, bias=False) if logprob_inputs else None
        if self.logprob_head is not None:
            nn.init.zeros_(self.logprob_head.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(input_ids=ids).last_hidden_state)


def encode_text(tokenizer, problem: str, steps: list[str], max_len: int) -> tuple[list[int], list[int]]:
    """A backbone's token ids and marker positions: the problem and a blank line (with the
    tokenizer's BOS: math_prm_bon's `prompt=none` text, tiny-math's training format), then each step
    and a blank line; the markers are the last tokens of the problem's part and of each step's
    (its blank line, where Math-Shepherd reads its step tag). Segments are tokenised one by one,
    the same at fit and at scoring; on world-v2 solutions with the zoo tokenizer that equals
    tokenising the joined text (tested). A problem too long to fit is cut from its start."""
    body, ends = [], []
    for s in steps:
        body += tokenizer(s + "\n\n", add_special_tokens=False)["input_ids"]
        ends.append(len(body) - 1)
    if len(body) >= max_len - 1:
        raise UserError(f"a solution of {len(body)} tokens does not fit the PRM's max_len {max_len}")
    head = tokenizer(problem + "\n\n")["input_ids"][-(max_len - len(body)) :]
    return head + body, [len(head) - 1] + [len(head) + e for e in ends]


LOGPROB_INPUTS = 2  # least_logprobs' columns


def least_logprobs(lm: nn.Module, encoded: list[tuple[list[int], list[int]]], batch: int = 32) -> list[torch.Tensor]:
    """Per encoded solution (ids, marker positions as encode_text gives them): [K + 1, 2], at each
    step's marker the log-probability under the causal LM `lm` of the least likely token of that
    step (its tokens after the previous marker up to its own, the blank line included) and of the
    whole solution so far; zeros at the problem's marker. On the synthetic world a slip is a token
    the policy's LM did not expect (`benchmarks/prm_probe.py`: this alone separates erred from clean
    prefixes at a held-out step AUROC of 0.86). Right-padded causal batches: pads never reach a real
    position."""
    out = []
    with torch.no_grad():
        for b in range(0, len(encoded), batch):
            chunk = encoded[b : b + batch]
            ids = pad([e[0] for e in chunk])
            logp = torch.log_softmax(lm(input_ids=ids).logits.float(), dim=-1)
            tok = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # tok[:, t - 1] = log p(ids[t] | ids[<t])
            for r, (_, marks) in enumerate(chunk):
                step = (
                    torch.stack([tok[r, a:z].min() for a, z in zip(marks, marks[1:])]) if len(marks) > 1 else tok[r, :0]
                )
                prefix = torch.cummin(step, 0).values
                out.append(torch.cat([torch.zeros(1, LOGPROB_INPUTS), torch.stack([step, prefix], 1)]))
    return out


@dataclass
class Trajectory:
    problem: str
    steps: list[str]
    q: list[float]  # q̂ at every prefix: [problem only, after step 1, ..., after step K]
    correct: bool


def mc_values(prob, steps, policy, rollouts: int, rng: random.Random, completer=None) -> list[float]:
    """q̂ per prefix by `rollouts` completions (completer(prob, prefix, rng) -> finished steps)."""
    completer = completer or policy.complete
    world, gold = mathworld.world_of(prob), str(prob.answer)
    out = []
    for k in range(len(steps) + 1):
        if k == len(steps) and world.finished(prob, steps):
            out.append(float(world.final_answer(prob, steps) == gold))
            continue
        hits = sum(world.final_answer(prob, completer(prob, steps[:k], rng)) == gold for _ in range(rollouts))
        out.append(hits / rollouts)
    return out


def hard(q: list[float]) -> list[float]:
    return [1.0 if v > 0 else 0.0 for v in q]


def best_of_k(q: list[float], k: int) -> list[float]:
    return [1 - (1 - v) ** k for v in q]


def pqm_loss(qs: torch.Tensor, labels: list[float], zeta: float, variant: str = "paper") -> torch.Tensor:
    """PQM's comparative loss for one trajectory: every correct step must outrank the earlier
    correct steps and the anchor Q_0 = 0, every wrong step sits ζ below; plus the anchor term when
    there are wrong steps. Mean over the counted terms.

    variant "paper": the paper's practical ranking loss (anchors-prm §4.4), a correct step's
    denominator e^{Q_t} + e^{Q_0} + Σ_{earlier correct} e^{Q_c} + Σ_W e^{Q_w+ζ}. variant "official":
    WindyLee0822/Process_Q_Model train_main.py `ranking_loss` as written: its cumulative sum of the
    correct steps' e^{Q} is inclusive from the trajectory's second step on, so such a step's own
    e^{Q_t} is counted twice in its denominator, and every denominator gets + 1e-5."""
    if variant not in PQM_VARIANTS:
        raise ValueError(f"PQM loss variant must be one of {', '.join(PQM_VARIANTS)}")
    correct = [i for i, y in enumerate(labels) if y >= 0.5]
    wrong = [i for i, y in enumerate(labels) if y < 0.5]
    zero = qs.new_zeros(())
    wrong_mass = [torch.logsumexp(qs[wrong] + zeta, 0)] if wrong else []

    def denominator(parts):
        den = torch.logsumexp(torch.stack(parts), 0)
        return torch.logaddexp(den, qs.new_tensor(math.log(1e-5))) if variant == "official" else den

    terms = []
    for j, t in enumerate(correct):
        again = [qs[t]] if variant == "official" and t > 0 else []
        terms.append(denominator([qs[t], zero] + [qs[c] for c in correct[:j]] + again + wrong_mass) - qs[t])
    if wrong:
        terms.append(denominator([zero] + wrong_mass))
    return torch.stack(terms).mean() if terms else qs.sum() * 0


PQM_VARIANTS = ("paper", "official")


@dataclass
class WorldPRM(PRMScorer):
    """Base of the PRMs trained on the synthetic world (see the module docstring); subclasses set
    `outputs`, `loss` and `read`."""

    outputs = 1
    ranges = {
        "problems": "[1, inf)",
        "samples": "[1, inf)",
        "rollouts": "[1, inf)",
        "epochs": "[1, inf)",
        "batch": "[1, inf)",
        "d_model": "[1, inf)",
        "layers": "[1, inf)",
        "heads": "[1, inf)",
        "max_len": "[1, inf)",
        "lr": "(0, inf)",
        "backbone_lr": "(0, inf)",
        "logprob_lr": "(0, inf)",
    }  # checked by params.build before any model loads
    problems: int = field(default=200, metadata={"help": "training problems (training-side seeds)"})
    samples: int = field(default=8, metadata={"help": "policy samples per training problem"})
    rollouts: int = field(default=8, metadata={"help": "Monte Carlo completions per prefix"})
    epochs: int = 4
    lr: float = 3e-3
    batch: int = 64
    d_model: int = 32
    layers: int = 2
    heads: int = 4
    max_len: int = 512
    read_problem: bool = field(
        default=False,
        metadata={"help": "feed the problem text too (2x the tokens); off: the steps, which quote their cues, only"},
    )
    # added after records were committed: at its default it stays out of run ids and fit keys
    positions: str = field(
        default="learned",
        metadata={"help": "learned (absolute position embeddings) or rope (rotary, relative)", "omit_at_default": True},
    )

    model_params = ("backbone",)
    backbone: str = field(
        default="",
        metadata={
            "help": "a causal LM to fine-tune with a linear head at each step's end (zoo:NAME or a local folder), "
            "as the papers' PRMs start from their policy's LM; empty: the small StepNet from scratch "
            "(d_model, layers, heads and positions then do not apply)",
            "omit_at_default": True,
        },
    )
    backbone_lr: float = field(
        # [our choice for zoo-sized backbones; RLHFlow's Math-Shepherd replication uses 2e-6 on 7B models]
        default=3e-4,
        metadata={"help": "learning rate when fine-tuning a backbone", "omit_at_default": True},
    )
    read_logprobs: bool = field(
        # a documented deviation (docs/families/prm.md): the papers' PRMs read the hidden state only
        default=False,
        metadata={
            "help": "with a backbone: a second head also reads the backbone LM's own (frozen) log-probability of "
            "the least likely token of each step and of the solution so far, where the policy LM keeps its "
            "arithmetic check",
            "omit_at_default": True,
        },
    )
    logprob_lr: float = field(
        # [our choice: two weights on inputs of a few units; at a fine-tuning rate they hardly move in the
        # default fit's ~100 optimizer steps (at 3e-3 they reached 0.1: a slip's -8 moved a score by 0.8 logits)]
        default=0.05,
        metadata={"help": "learning rate of read_logprobs' second head", "omit_at_default": True},
    )

    def __post_init__(self):
        super().__post_init__()
        if min(self.problems, self.samples, self.rollouts, self.epochs, self.batch, self.d_model, self.layers) < 1:
            raise ValueError("problems, samples, rollouts, epochs, batch, d_model and layers must be positive")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}")
        if not self.backbone_lr > 0:
            raise ValueError("backbone_lr must be positive")
        if self.read_logprobs and not self.backbone:
            raise ValueError(
                "read_logprobs reads a backbone LM's token probabilities: give backbone=zoo:NAME or a folder"
            )
        self._net: nn.Module | None = None
        self._lm: nn.Module | None = None  # read_logprobs: the frozen backbone LM, outside the saved state
        self._tokenizer = None  # the backbone's
        self._key: str | None = None  # the artifact key (scores are cached under it)

    # -- fit hooks ------------------------------------------------------------------------------
    def needs_fit(self, lm, ctx) -> bool:
        return True

    def fit_params(self, lm, ctx) -> dict:
        keep = (
            "problems",
            "samples",
            "rollouts",
            "epochs",
            "lr",
            "batch",
            "d_model",
            "layers",
            "heads",
            "max_len",
            "read_problem",
        )
        moved = {"positions": self.positions} if self.positions != "learned" else {}
        if self.backbone:  # the backbone's identity is its weights, whatever the spec's spelling
            from harness import models

            spec, sha = models.identity(self.backbone)
            moved.update(backbone=spec, backbone_sha256=sha, backbone_lr=self.backbone_lr)
            moved.update({"read_logprobs": True, "logprob_lr": self.logprob_lr} if self.read_logprobs else {})
        return dict(
            {k: getattr(self, k) for k in keep}, **self.label_params(), **moved, seed=ctx.seed, **world_key(ctx)
        )

    def label_params(self) -> dict:
        return {}

    def fit_data_hash(self, lm, ctx) -> str:
        return world_data_hash(ctx, self.problems)

    def _net_new(self) -> nn.Module:
        if not self.backbone:
            return StepNet(self.d_model, self.layers, self.heads, self.max_len, self.outputs, self.positions)
        from harness import models

        if not self.read_logprobs:
            loaded = models.load(self.backbone, device="cpu", head="base")
            self._tokenizer = loaded.tokenizer
            return BackboneNet(loaded.model.float(), self.outputs)
        # one load: the causal LM stays frozen for least_logprobs, a copy of its trunk trains
        loaded = models.load(self.backbone, device="cpu")
        self._tokenizer = loaded.tokenizer
        self._lm = loaded.model.float().eval().requires_grad_(False)
        trunk = copy.deepcopy(self._lm.base_model).requires_grad_(True)
        return BackboneNet(trunk, self.outputs, LOGPROB_INPUTS)

    def marker_outputs(self, net: nn.Module, encoded: list[tuple[list[int], list[int]]], logprobs=None) -> list:
        """Per encoded solution: the head outputs [K + 1, outputs] at its markers (plus, with
        read_logprobs, the second head's reading of its least_logprobs rows)."""
        res = net(pad([e[0] for e in encoded]))
        outs = [res[r, e[1]] for r, e in enumerate(encoded)]
        if logprobs is None:
            return outs
        return [o + net.logprob_head(f) for o, f in zip(outs, logprobs)]

    def encode(self, problem: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """Token ids and marker positions for this PRM's network (read_problem: with the problem)."""
        problem = problem if self.read_problem else ""
        if self.backbone:
            return encode_text(self._tokenizer, problem, steps, self.max_len)
        return encode(problem, steps, self.max_len)

    def collect(self, world, policy, rng: random.Random, seed: int) -> tuple[list[Trajectory], int]:
        """The labelled trajectories and the number of policy rollouts spent on labels: here
        `samples` solutions per problem of `world` (a harness.mathworld.world module) and
        `rollouts` completions at every prefix whose value is not already exact (Math-Shepherd's
        estimation)."""
        data, spent = [], 0
        for i in range(self.problems):
            prob = world.problem(i)
            for j in range(self.samples):
                steps = policy.sample(prob, world.sample_seed(prob, j, salt=1 + seed))
                q = mc_values(prob, steps, policy, self.rollouts, rng)
                spent += self.rollouts * (len(steps) + 1 - world.finished(prob, steps))
                data.append(
                    Trajectory(
                        prob.text, [s.text for s in steps], q, world.final_answer(prob, steps) == str(prob.answer)
                    )
                )
        return data, spent

    def fit(self, lm, ctx, log=print):
        torch.manual_seed(ctx.seed)
        world = mathworld.world(ctx.world_version)
        policy, rng = world.Policy(), random.Random(ctx.seed)
        data, spent = self.collect(world, policy, rng, ctx.seed)
        log(
            f"{self.name}: {len(data)} trajectories, {sum(len(t.steps) for t in data)} steps, "
            f"policy accuracy {sum(t.correct for t in data) / len(data):.3f}, {spent} label rollouts"
        )
        net = self._net_new()
        extra = getattr(net, "logprob_head", None)  # read_logprobs' second head learns at its own rate
        groups = [{"params": [p for n, p in net.named_parameters() if not n.startswith("logprob_head.")]}]
        groups += [{"params": list(extra.parameters()), "lr": self.logprob_lr}] if extra is not None else []
        opt = torch.optim.AdamW(groups, lr=self.backbone_lr if self.backbone else self.lr, weight_decay=0.01)
        encoded = [self.encode(t.problem, t.steps) for t in data]
        logprobs = least_logprobs(self._lm, encoded) if self.read_logprobs else None

        def batch_loss(chunk):
            outs = self.marker_outputs(
                net, [encoded[i] for i in chunk], [logprobs[i] for i in chunk] if logprobs else None
            )
            return torch.stack([self.loss(o, data[i]) for o, i in zip(outs, chunk)]).mean()

        trace = train_loop(opt, len(data), batch_loss, self.epochs, self.batch, rng, log, self.name)
        self._net = net.eval()
        state = {k: v.contiguous() for k, v in net.state_dict().items()}

        def write(folder):
            from safetensors.torch import save_file

            save_file(state, str(folder / "prm.safetensors"))

        return {
            "trajectories": len(data),
            "label_rollouts": spent,
            "loss_trace": trace,
            "policy_accuracy": sum(t.correct for t in data) / len(data),
            "parameters": sum(p.numel() for p in net.parameters()),
        }, write

    def use_artifact(self, payload, folder) -> None:
        from safetensors.torch import load_file

        self._key = payload.get("key")
        net = self._net_new()
        net.load_state_dict(load_file(str(folder / "prm.safetensors")))
        self._net = net.eval()

    # -- scoring --------------------------------------------------------------------------------
    def outputs_at_markers(self, problem: str, solutions: list[list[str]], cache: bool = True) -> list[torch.Tensor]:
        """Per solution: the head outputs [K + 1, outputs] at the problem end and every step end.
        Cached on disk by (artifact, problem, solutions), so evaluating the other aggregations of
        the same fitted PRM does not run the network again."""
        if self._net is None:
            raise UserError(f"{self.name} has no trained network: run `harness fit --method {self.name}` first")

        def compute():
            enc = [self.encode(problem, steps) for steps in solutions]
            out = []
            with torch.no_grad():
                for b in range(0, len(enc), 64):
                    chunk = enc[b : b + 64]
                    logprobs = least_logprobs(self._lm, chunk) if self.read_logprobs else None
                    out += self.marker_outputs(self._net, chunk, logprobs)
            return out

        return cached_outputs(self.name, self._key if cache else None, problem, solutions, compute)

    def score(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        return [self.read(o) for o in self.outputs_at_markers(problem, solutions)]

    def read(self, out: torch.Tensor) -> list[float]:
        """Step scores from the outputs at [problem end, step 1, ..., step K]."""
        raise TypeError(f"{type(self).__name__} must define read()")  # abstract: each subclass overrides it

    def loss(self, out: torch.Tensor, traj: Trajectory) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define loss()")  # abstract: each subclass overrides it


def world_key(ctx) -> dict:
    """The world version for a fit's parameters: absent for version 1, so the keys of artifacts
    fit before version 2 existed stay what they were."""
    return {} if ctx.world_version == 1 else {"world_version": ctx.world_version}


def world_data_hash(ctx, problems: int) -> str:
    """The fit data's identity: the world (module and policy) and the training problem seeds."""
    world = mathworld.world(ctx.world_version)
    return hashlib.sha256(
        canonical({"world": world.__name__, "policy": world.Policy().__dict__, "problem_seeds": [0, problems]}).encode()
    ).hexdigest()


def train_loop(opt, n_items: int, batch_loss, epochs: int, batch: int, rng: random.Random, log, name: str):
    """`epochs` passes over the items in a fresh shuffled order each (from `rng`), one optimizer
    step per `batch` items with loss batch_loss(indices); returns the mean loss of each epoch."""
    trace = []
    for epoch in range(epochs):
        order = list(range(n_items))
        rng.shuffle(order)
        total = 0.0
        for b in range(0, len(order), batch):
            chunk = order[b : b + batch]
            loss = batch_loss(chunk)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
        trace.append(total / max(1, n_items))
        log(f"{name}: epoch {epoch + 1}/{epochs} loss {trace[-1]:.4f}")
    return trace


def cached_outputs(name: str, key: str | None, problem: str, solutions: list[list[str]], compute) -> list:
    """compute() -> one tensor per solution, cached on disk by (artifact key, problem, solutions)
    so re-reading the same fitted scorer (another aggregation) does not run it again; key None:
    no cache (an unfitted network, or a search's fresh candidates). An exclusive lock per entry
    makes a second process that wants the same scores (a sweep worker running the fit's other
    aggregation at the same time) wait for them instead of computing them again."""
    if key is None:
        return compute()
    path = _cache_dir() / f"{name}-{sha256_text(canonical([key, problem, solutions]))[:24]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        with contextlib.suppress(OSError):  # a file system without flock: compute unlocked
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            return [torch.tensor(o) for o in json.loads(path.read_text())]
        except (OSError, ValueError):
            pass
        out = compute()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([torch.as_tensor(o).tolist() for o in out]))
        os.replace(tmp, path)
        return out


def _cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")) / "prm-scores"


def pad(seqs: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [PAD] * (width - len(s)) for s in seqs], dtype=torch.long)


def soft_bce(logits: torch.Tensor, targets: list[float]) -> torch.Tensor:
    """Mean BCE with (soft) targets; 0 for a solution without steps (the policy stopped at once)."""
    if not targets:
        return logits.sum() * 0
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(targets, dtype=logits.dtype))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -50 else 0.0
