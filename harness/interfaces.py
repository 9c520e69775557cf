"""The two things the harness evaluates: Tasks and Methods. Both are dataclasses whose fields are
their parameters; they register with `harness.registry.register`."""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

if TYPE_CHECKING:
    from harness.generator import GenerationRequest

METHOD_KINDS = ("lm", "step_scorer", "video_source", "noise_prior")


def length_alias_params(length_alias: str | None, name: str) -> dict[str, str] | None:
    """needle_128k -> {"context_length": "131072"} for a task whose length_alias is "needle"."""
    m = re.fullmatch(rf"{length_alias}_(\d+)k", name) if length_alias else None
    return {"context_length": str(int(m.group(1)) * 1024)} if m and int(m.group(1)) > 0 else None


class Method:
    """One paper's technique. Subclasses are dataclasses; their docstring names the paper.

    Methods that must be trained or searched first override the fit hooks: `needs_fit` says
    whether this configuration needs an artifact, `fit` produces it (`harness fit`), and
    `use_artifact` takes it back before evaluation (see harness.artifacts)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    family: ClassVar[str] = "other"
    paper: ClassVar[str] = ""  # "Title (arXiv id)"
    fit_version: ClassVar[str] = "1"  # bump when the fit code changes what it produces
    fit_name: ClassVar[str | None] = None  # methods sharing one fit (eagle, eagle2) share this; else name
    smoke_args: ClassVar[dict[str, str]] = {}  # a seconds-long configuration (matrix test)
    smoke_model_config: ClassVar[dict] = {}  # config fields the matrix test's tiny model needs
    # params that name a model the method loads besides the LM (a draft, a base, a backbone, a
    # checkpoint): their weights' sha256 enter the run id and the record (`method.models`), so a
    # retrained draft under the same name gets a new record instead of being skipped as finished
    model_params: ClassVar[tuple[str, ...]] = ()

    def needs_fit(self, lm, ctx: "MethodContext") -> bool:
        return False

    def fit_params(self, lm, ctx: "MethodContext") -> dict:
        """Everything that shapes the artifact besides model and data (part of its key)."""
        return {}

    def fit_data_hash(self, lm, ctx: "MethodContext") -> str:
        return ""

    def fit(self, lm, ctx: "MethodContext", log=print) -> tuple[dict, Any]:
        """Returns (JSON-ready payload, write_files(folder) callable or None)."""
        raise TypeError(f"method {self.name} has no fit stage")

    def use_artifact(self, payload: dict, folder) -> None:
        raise TypeError(f"method {self.name} has no fit stage")

    def resolved(self, lm, ctx: "MethodContext") -> dict:
        """Values the method derived at run time (e.g. a scale factor), for the record."""
        return {}

    def check_effect(self, lm, ctx: "MethodContext", result: "TaskResult") -> str | None:
        """After the task ran: None when the method demonstrably acted (its patch ran, its cache
        holds the budgeted length, it proposed draft tokens, ...), else the reason it did not.
        The runner fails the cell on a reason, so a silent no-op never becomes a number. Every
        registered method must override this (tests/test_matrix.py checks it)."""
        return f"method {self.name} declares no check of its own effect"


class LMMethod(Method):
    """Acts on a loaded causal LM: `apply` patches and restores on exit.

    `patches` names what the method replaces (e.g. {"rope"}); two composed methods that patch the
    same thing are refused, because the second would silently undo the first."""

    kind = "lm"
    patches: ClassVar[frozenset[str]] = frozenset()
    # KV-cache methods: what their budget counts ("tokens" kept, "bits" per value, "bytes" against
    # the dense cache); None: the method manages no KV cache. The kv_compression task reads it.
    budget_unit: ClassVar[str | None] = None
    # Decoding methods: whether the output is promised to be the target's own (speculative decoding:
    # lossless). spec_acceptance fails a cell of the spec family that breaks the promise, and only
    # reports agreement with the target's greedy output for a method that makes none (Co-LLM).
    lossless: ClassVar[bool] = True

    def draft_length(self) -> int | None:
        """Speculative methods drafting a fixed-length chain: tokens drafted per step (γ), from which
        spec_acceptance derives the analytic τ; None for every other method (trees, no drafts)."""
        return None

    def apply(self, lm, ctx: "MethodContext") -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class StepScorer(Method):
    """PRM / ORM / verifier (kind step_scorer): scores the steps of candidate solutions.

    `score(problem, solutions)` gets a problem's text and its solutions (each a list of step
    strings) and returns one list of step scores per solution; `aggregate` turns a solution's step
    scores into one solution score (higher = better); `vote_weight` maps that score to a
    non-negative weight for weighted majority voting. A method with selection "vote" scores
    nothing and picks by answer counts (majority voting); one with selection "search" generates
    its own solution with a budget of N (`search`, e.g. PRM-guided beam search)."""

    kind = "step_scorer"
    selection: ClassVar[str] = "argmax"  # "argmax", "vote" or "search"

    def score(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        raise TypeError(f"method {self.name} does not define score()")

    def score_records(self, problem: dict, solutions: list[dict]) -> list[list[float]]:
        """What the task calls: the problem and solution records (a method that reads fields other
        than the text, such as precomputed scores, overrides this)."""
        return self.score(problem["problem"], [s["steps"] for s in solutions])

    def aggregate(self, step_scores: list[float]) -> float:
        raise TypeError(f"method {self.name} does not define aggregate()")

    def vote_weight(self, score: float) -> float:
        return score

    def search(self, problem: dict, n: int, seed: int) -> str | None:
        """selection "search": the final answer found with budget n (None: no answer)."""
        raise TypeError(f"method {self.name} does not define search()")


class VideoSource(Method):
    """Supplies the videos a video task scores (kind video_source): `videos(ctx)` returns them, and
    the task reports back through `note_loaded` how many it could read (the effect check's input)."""

    kind = "video_source"

    def videos(self, ctx: "TaskContext") -> list:
        raise TypeError(f"method {self.name} does not define videos()")

    def note_loaded(self, readable: int, errors: list[dict]) -> None:
        """Called by the task after loading: `readable` videos decoded, `errors` for the others."""


class NoiseSampler(Method):
    """Samples the initial noise of a video diffusion model (kind noise_prior): `draw(shape,
    generator, flows)` returns a float tensor of `shape` = [frames, channels, height, width] with
    per-pixel N(0, 1) marginals. The noise_prior task scores the noise itself; a video task run
    with a generator (`--model diffusers:PATH`, harness.generator) starts every video from it.
    `generator_refusal` says why the prior cannot drive a plain generator (None: it can)."""

    kind = "noise_prior"

    def draw(self, shape, generator, flows=None):
        raise TypeError(f"method {self.name} does not define draw()")

    def generator_refusal(self) -> str | None:
        return None


@dataclass
class MethodContext:
    """What a method may know about the run: the longest context the task will use, the seed, and
    the version of the synthetic math world (harness.mathworld) the task's problems come from
    (verifiers that train on that world fit on the same version). The fit hooks (needs_fit,
    fit_params, fit_data_hash, fit) see the fit's seed (`harness fit --seed`, `harness eval
    --fit-seed`); apply, resolved and check_effect the evaluation's."""

    target_length: int | None = None
    seed: int = 0
    world_version: int = 1


@dataclass
class Metric:
    value: float
    direction: str  # "higher" or "lower" is better
    unit: str = ""
    n: int | None = None
    stderr: float | None = None
    count: int | None = None  # sufficient statistics of a mean
    sum: float | None = None
    sum_sq: float | None = None
    sample_field: str | None = None  # the per-sample field this metric is the mean of (paired tests)

    @classmethod
    def mean(cls, values, direction: str, unit: str = "", sample_field: str | None = None) -> "Metric":
        vals = [float(v) for v in values]
        n = len(vals)
        s, ss = sum(vals), sum(v * v for v in vals)
        mean = s / n if n else float("nan")
        var = (ss - n * mean * mean) / (n - 1) if n > 1 else float("nan")
        stderr = math.sqrt(max(var, 0.0) / n) if n > 1 else None
        return cls(mean, direction, unit, n, stderr, n, s, ss, sample_field)

    @classmethod
    def ratio(cls, numerators, denominators, direction: str, unit: str = "") -> "Metric":
        """Σ numerators / Σ denominators over the samples (a pooled rate, as Spec-Bench pools accepted
        tokens over all decoding steps, so long outputs weigh by their length), with the delta-method
        standard error of a ratio estimator. No sufficient statistics of a mean: pooling two such
        metrics needs their sums, not their values."""
        ys, xs = [float(v) for v in numerators], [float(v) for v in denominators]
        n, total = len(ys), sum(xs)
        value = sum(ys) / total if total else float("nan")
        stderr = None
        if n > 1 and total:
            resid = [y - value * x for y, x in zip(ys, xs)]
            stderr = math.sqrt(sum(e * e for e in resid) / (n - 1) / n) / (total / n)
        return cls(value, direction, unit, n, stderr)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class TaskResult:
    metrics: dict[str, Metric]
    samples: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)
    data_hash: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # extra provenance (a bridged library's version)


class Task:
    """A named, versioned evaluation. Subclasses are dataclasses of their parameters."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    accepts: ClassVar[tuple[str, ...]] = ("lm",)  # method kinds
    main_metric: ClassVar[str]
    summary: ClassVar[str] = ""
    aliases: ClassVar[dict[str, dict[str, str]]] = {}  # alias -> params (strings, as on the CLI)
    smoke_args: ClassVar[dict[str, str]] = {}  # a seconds-long configuration (matrix test)
    length_alias: ClassVar[str | None] = None  # "needle": needle_<N>k = context_length N*1024
    generates: ClassVar[bool] = True  # False: scores text only, so decoding methods have nothing to act on
    needs_lm: ClassVar[bool] = True  # False: no model is loaded (ctx.lm is None); methods arrive in ctx.methods

    def uses_lm(self) -> bool:
        """Whether this configuration runs a language model (ctx.lm), which the runner loads: the
        class's `needs_lm`, unless the task's parameters decide it (math_prm_bon loads one only to
        sample its own pools)."""
        return self.needs_lm

    def check_model(self, model: str | None, loading) -> None:
        """Refuse, with a UserError before any model loads, a --model this configuration cannot
        use (model: what the user named, None when nothing; loading: harness.loading.LoadOptions)."""

    def takes_chat_template(self) -> bool:
        """Whether --apply-chat-template means something here: the task prompts a model for a
        generation (LM.prompt_ids); a task scoring text as it is (perplexity) does not."""
        return self.uses_lm() and self.generates

    @classmethod
    def alias_params(cls, name: str) -> dict[str, str] | None:
        """Parameters a pattern alias stands for (None: `name` is not one of this task's aliases)."""
        return length_alias_params(cls.length_alias, name)

    def target_length(self) -> int | None:
        """Longest context this task will feed the model (methods derive scale factors from it)."""
        return None

    def math_world(self) -> int:
        """Version of the synthetic math world (harness.mathworld) this task evaluates on; methods
        that train on that world read it from MethodContext.world_version."""
        return 1

    def workload(self, limit: int | None) -> list[tuple[int, int]] | None:
        """(prompt tokens, generated tokens) of each sample the task will run, for the memory check,
        the batch size and the time estimate before it starts (harness.budget); None: not declared."""
        return None

    def run(self, ctx: "TaskContext") -> TaskResult:
        raise TypeError(f"task {self.name} does not define run()")

    def generation_request(self) -> "GenerationRequest | None":
        """What a video generator (`--model diffusers:PATH`) renders for this configuration: the
        benchmark's own prompts and sampling rule (harness.generator.GenerationRequest); None (the
        default): the task only scores videos it is given."""
        return None

    @classmethod
    def report(cls, recs: list[dict]) -> str | None:
        """Markdown tables of this task's records for `harness report` and the docs site; None
        (the default) leaves it to the generic tables of harness.report."""
        return None


@dataclass
class TaskContext:
    lm: Any  # harness.lm.LM for tasks that accept lm methods
    seed: int = 0
    limit: int | None = None
    progress: Any = None  # callable(iterable, total=, desc=) -> iterable
    methods: list = field(default_factory=list)  # the cell's methods (tasks of non-lm kinds call them)
    model: str | None = None  # the --model the user gave (tasks that load their own models)
    device: str = "auto"  # the --device the user gave (a generator model runs there)
    loading: Any = None  # the cell's harness.loading.LoadOptions (a generator model's dtype)
    notes: dict = field(default_factory=dict)  # what the core did for the task (the generator), for the record

    def iterate(self, items, total: int | None = None, desc: str = "") -> Iterator:
        if self.progress is None:
            return iter(items)
        return self.progress(items, total=total, desc=desc)
