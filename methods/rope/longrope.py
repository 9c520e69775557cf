from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

import torch

from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.rope._common import RopeMethod, inv_freq, linear_ramp, rope_override, yarn_correction_range
from harness.synthetic import Corpus

START_TOKEN_CHOICES = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
SEARCH_TEXT_SEED = 424242  # a training-side seed: the search never sees evaluation text


@register
@dataclass
class LongRoPE(RopeMethod, LMMethod):
    """LongRoPE — Ding et al. 2024, "LongRoPE: Extending LLM Context Window Beyond 2 Million
    Tokens" (arXiv:2402.13753); search defaults from microsoft/LongRoPE `evolution/`.

    Non-uniform interpolation θ_i' = θ_i / λ_i with one rescale factor per frequency (monotone
    non-decreasing from high to low frequency), the first n̂ positions left un-interpolated, and
    the attention scale √(1 + ln s / ln L) ("su") on cos and sin. A sequence that fits the original
    context L rotates with the short factors instead (§3.3: the factors are readjusted for short
    lengths and picked by input length at inference), as Phi-3's config and transformers'
    `longrope` type do: short_factor when seq_len ≤ L, long_factor otherwise; the rule is taken per
    row from the row's length (the whole prompt's during chunked prefill), and the attention scale
    applies in both regimes, as there. Long factors are given, or found by
    `harness fit`: the paper's evolutionary search (population 64, 32 parents, 16 mutations and
    16 crossovers per iteration, factors on a 0.01 grid in [1, 1.25·s], PI / NTK / YaRN seeds)
    minimising perplexity at the target length on training-side synthetic text. The mutation
    draw (each factor moves with probability 0.1 by a normal step of 0.05·s) is this project's
    choice where the paper gives none.

    factor: s; None = target / original context. rescale_factors: λ (d/2 values) for sequences
    longer than L (Phi-3's long_factor), or None = from the fit. short_factors: λ for sequences of
    at most L tokens (Phi-3's short_factor); None = 1.0 each, the model's own frequencies (the
    paper's short-length search is not run by `harness fit`). start_tokens: n̂ (None = from the fit, or 0 with given factors).
    attention_scale: "su", "yarn" (0.1 ln s + 1) or "none". iterations: search iterations (40).
    """

    name = "longrope"
    paper = "LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens (arXiv:2402.13753)"
    fit_version = "1"
    smoke_args = {
        "population": "4",
        "parents": "2",
        "iterations": "1",
        "mutations": "2",
        "crossovers": "1",
        "search_windows": "1",
    }
    ranges = {
        "factor": "[1, inf)",
        "rescale_factors": "[1, inf)",
        "short_factors": "(0, inf)",  # positive, as the check below; Phi-3's are >= 1 but nothing requires it
        "start_tokens": "[0, inf)",
        "population": "[1, inf)",
        "parents": "[1, inf)",
        "mutations": "[0, inf)",
        "crossovers": "[0, inf)",
        "iterations": "[1, inf)",
        "search_windows": "[1, inf)",
    }  # checked by params.build before any model loads
    factor: float | None = field(default=None, metadata={"help": "scale s; None = derived from the task"})
    rescale_factors: tuple[float, ...] | None = field(default=None, metadata={"help": "λ_i; None = searched"})
    short_factors: tuple[float, ...] | None = field(default=None, metadata={"help": "λ_i for seq_len <= L; None = 1"})
    start_tokens: int | None = None
    attention_scale: str = "su"
    population: int = 64
    parents: int = 32
    mutations: int = 16
    crossovers: int = 16
    iterations: int = 40
    search_windows: int = 2  # target-length windows of text per perplexity evaluation

    def __post_init__(self):
        if self.attention_scale not in ("su", "yarn", "none"):
            raise ValueError("attention_scale must be su, yarn or none")
        for given in (self.rescale_factors, self.short_factors):
            if given is not None and any(x <= 0 for x in given):
                raise ValueError("rescale_factors and short_factors must be positive")
        if min(self.population, self.parents, self.iterations, self.search_windows) < 1:
            raise ValueError("population, parents, iterations and search_windows must be positive")
        self._found: tuple[list[float], int] | None = None

    # -- the frequencies ---------------------------------------------------------------------
    def scale(self, s: float, L: int) -> float:
        if s <= 1 or self.attention_scale == "none":
            return 1.0
        return math.sqrt(1 + math.log(s) / math.log(L)) if self.attention_scale == "su" else 0.1 * math.log(s) + 1

    def factors(self, shape, s: float) -> tuple[list[float], int]:
        if s <= 1 and self.rescale_factors is None:  # nothing to extend: the identity
            return [1.0] * (shape.dim // 2), 0
        if self.rescale_factors is not None:
            if len(self.rescale_factors) != shape.dim // 2:
                raise UserError(
                    f"longrope: {len(self.rescale_factors)} rescale_factors given, the model's "
                    f"RoPE has {shape.dim // 2} frequencies"
                )
            return list(self.rescale_factors), self.start_tokens or 0
        if self._found is None:
            raise UserError("longrope without rescale_factors needs its fit stage (harness fit --method longrope)")
        factors, n = self._found
        return factors, n if self.start_tokens is None else self.start_tokens

    def short(self, shape) -> list[float]:
        if self.short_factors is None:
            return [1.0] * (shape.dim // 2)
        if len(self.short_factors) != shape.dim // 2:
            raise UserError(
                f"longrope: {len(self.short_factors)} short_factors given, the model's RoPE has "
                f"{shape.dim // 2} frequencies"
            )
        return list(self.short_factors)

    def freq_fn(self, shape, s):
        lam, _ = self.factors(shape, s)
        base = inv_freq(shape.base, shape.dim)
        long, short = base / torch.tensor(lam), base / torch.tensor(self.short(shape))
        scaling = self.scale(s, shape.original_max)
        return lambda seq_len: (long if seq_len > shape.original_max else short, scaling)

    def apply(self, lm, ctx):
        shape, s = self.resolve(lm, ctx)
        _, n = self.factors(shape, s)
        return rope_override(
            lm.model,
            self.freq_fn(shape, s),
            keep_first=(n, inv_freq(shape.base, shape.dim)),
            counter=lm.telemetry,
            lm=lm,
        )

    def resolved(self, lm, ctx) -> dict:
        out = super().resolved(lm, ctx)
        shape, s = self.resolve(lm, ctx)
        lam, n = self.factors(shape, s)
        short = [round(x, 4) for x in self.short(shape)]
        return dict(out, rescale_factors=[round(x, 4) for x in lam], short_factors=short, start_tokens=n)

    # -- the fit stage: evolutionary search ----------------------------------------------------
    def needs_fit(self, lm, ctx) -> bool:
        return self.rescale_factors is None and self.resolve(lm, ctx)[1] > 1

    def fit_params(self, lm, ctx) -> dict:
        shape, s = self.resolve(lm, ctx)
        return {
            "scale": s,
            "original": shape.original_max,
            "attention_scale": self.attention_scale,
            "population": self.population,
            "parents": self.parents,
            "mutations": self.mutations,
            "crossovers": self.crossovers,
            "iterations": self.iterations,
            "windows": self.search_windows,
        }

    def _search_ids(self, lm, ctx) -> torch.Tensor:
        shape, s = self.resolve(lm, ctx)
        n = round(s * shape.original_max)
        corpus, ids = Corpus(SEARCH_TEXT_SEED), []
        while len(ids) < n * self.search_windows:
            ids += lm.encode(" " + corpus.text(50))
        return torch.tensor(ids[: n * self.search_windows]).view(self.search_windows, n)

    def fit_data_hash(self, lm, ctx) -> str:
        return hashlib.sha256(self._search_ids(lm, ctx).numpy().tobytes()).hexdigest()

    def use_artifact(self, payload, folder) -> None:
        self._found = (list(payload["rescale_factors"]), int(payload["start_tokens"]))

    def fit(self, lm, ctx, log=print):
        shape, s = self.resolve(lm, ctx)
        ids = self._search_ids(lm, ctx).to(lm.device)
        base = inv_freq(shape.base, shape.dim)
        half, hi = shape.dim // 2, 1.25 * s
        rng = random.Random(ctx.seed)
        grid = lambda x: min(hi, max(1.0, round(x / 0.01) * 0.01))
        mono = lambda lam: [grid(v) for v in _cummax(lam)]
        starts = [n for n in START_TOKEN_CHOICES if n < shape.original_max]
        cache: dict[tuple, float] = {}

        @torch.no_grad()
        def ppl(cand) -> float:
            if cand not in cache:
                lam, n = list(cand[:-1]), cand[-1]
                inv = base / torch.tensor(lam)
                with rope_override(lm.model, lambda _: (inv, self.scale(s, shape.original_max)), (n, base)):
                    cache[cand] = math.exp(float(lm.model(input_ids=ids, labels=ids).loss))
            return cache[cand]

        low, high = yarn_correction_range(32, 1, shape, shape.original_max)
        yarn_keep = 1 - linear_ramp(low, high, half)
        ntk_base = shape.base * s ** (shape.dim / (shape.dim - 2))
        seeds = [
            [s] * half,
            (base / inv_freq(ntk_base, shape.dim)).tolist(),
            (1 / ((1 - yarn_keep) / s + yarn_keep)).tolist(),
        ]
        pop = {tuple(mono(lam)) + (n,) for lam in seeds for n in (0, starts[min(4, len(starts) - 1)])}

        def mutate(c):
            lam = [v + rng.gauss(0, 0.05 * s) if rng.random() < 0.1 else v for v in c[:-1]]
            n = c[-1] if rng.random() >= 0.1 else rng.choice(starts)
            return tuple(mono(lam)) + (n,)

        while len(pop) < self.population:
            pop.add(mutate(rng.choice(sorted(pop))))
        ranked = sorted(pop, key=ppl)[: self.parents]
        trace = [ppl(ranked[0])]
        for it in range(self.iterations):
            children = {mutate(rng.choice(ranked)) for _ in range(self.mutations)}
            for _ in range(self.crossovers):
                a, b = rng.sample(ranked, 2) if len(ranked) > 1 else (ranked[0], ranked[0])
                children.add(tuple(mono([rng.choice(p) for p in zip(a[:-1], b[:-1])])) + (rng.choice((a[-1], b[-1])),))
            ranked = sorted(set(ranked) | children, key=ppl)[: self.parents]
            trace.append(ppl(ranked[0]))
            log(f"longrope search iteration {it + 1}/{self.iterations}: best perplexity {trace[-1]:.4f}")
        best = ranked[0]
        baselines = {"pi": ppl(tuple(mono([s] * half)) + (0,))}
        return (
            {
                "rescale_factors": list(best[:-1]),
                "start_tokens": best[-1],
                "perplexity": trace[-1],
                "seed_perplexities": baselines,
                "trace": trace,
                "evaluated": len(cache),
                "target_length": ids.shape[1],
            },
            None,
        )


def _cummax(values):
    out, m = [], -math.inf
    for v in values:
        m = max(m, v)
        out.append(m)
    return out
