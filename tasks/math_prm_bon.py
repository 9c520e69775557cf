"""MATH best-of-N with process/outcome reward models: a pool of sampled solutions per problem, a
step_scorer method scores them, and the task reports accuracy@N, majority@N, weighted_majority@N
and the oracle pass@N for N = 1, 2, 4, ... up to the pool size."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields

import numpy as np

from harness import models, mathworld
from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.mathgrade import Grader
from harness.records import canonical, sha256_text
from harness.registry import register
from harness.tasks import _bon_metrics as bon
from harness.tasks import _prm_report
from harness.tasks import _prm_formats as formats
from harness.tasks import _sampled_pools as sampled

# parameters of solutions=generate: added after records were committed, so at their defaults they
# stay out of run ids (harness.params, omit_at_default); the record's details.pool names them all
GENERATION = {"omit_at_default": True, "generation": True}


@register
@dataclass
class MathPrmBon(Task):
    """Best-of-N selection on MATH-style problems (protocol: anchors-prm §1.9).

    Input: `problems` and `solutions` files (format `harness`, see the README, or an importer:
    prm800k, rlhflow, pqm, sal), or "synthetic" for the project's synthetic math world
    (harness.mathworld: `world_problems` problems, `world_samples` policy samples each, evaluation
    seeds; `world_version` 2 is harness.mathworld2, whose steps show their arithmetic — the world
    PRMs then fit on version 2 too, through MethodContext.world_version). Answers are graded against the gold answer by harness.mathgrade (math-verify behind a
    process timeout, conservative fallbacks); a problem without a gold answer uses the solutions'
    given labels. Answer classes for voting are grader-equivalence classes, not raw strings.

    `solutions=generate` samples the pools from the language model named by --model (a local
    checkpoint folder, hf:<id> or zoo:<name>), as search-and-learn's best-of-N does (anchors-prm
    §1.8), for the problems of `problems` (harness format: JSONL with "problem" and "answer", e.g.
    a local MATH-500 file), or for `world_problems` problems of the synthetic world
    (`problems=synthetic`; e.g. zoo:tiny-math with `prompt=none`, the format it was trained on):
    `samples` solutions per problem at `temperature` and `top_p` (plain
    sampling, top-k off), at most `max_new_tokens` new tokens each, seeded by --seed and the
    problem's id. The prompt is the system prompt `prompt` ("sal": search-and-learn's Llama MATH
    CoT prompt, asking for "## Step k:" steps and a final \boxed{} answer; "none"; or its own
    text) and the problem: with --apply-chat-template as the template's system and user turns,
    else as plain text (system prompt, blank line, problem, blank line). Steps are split on
    `step_sep` and answers extracted by harness.mathgrade. The pool is cached as an artifact keyed
    by the model's weights sha256, the problems, the prompt tokens and the sampling settings
    (harness.artifacts), so another verifier on the same pool does not sample again; the record's
    details.pool names the artifact, whether it was a cache hit, and every sampling setting.

    Metrics per N: accuracy@N — the exact expectation over uniform N-subsets of the correctness of
    the method's pick (argmax of the aggregated score, ties averaged; a "vote" method picks by
    majority, by Monte Carlo; a "search" method — PRM-guided beam search — runs once per N with a
    budget of N and is graded on its answer); majority@N and weighted_majority@N (scores summed per answer class)
    by Monte Carlo over `trials` seeded subsets, the same subsets for every method; pass@N exact.
    `accuracy` (main) is accuracy@N at the largest N. Solutions without an answer occupy a slot
    and are wrong when picked; they never vote. Problem-level bootstrap intervals (`bootstrap`
    resamples) and the Monte Carlo trial std go to details."""

    name = "math_prm_bon"
    version = "1"
    accepts = ("step_scorer",)
    main_metric = "accuracy"
    needs_lm = False
    generates = False
    summary = "best-of-N reranking of sampled MATH solutions by PRMs/ORMs: accuracy@N, majority@N, pass@N"
    smoke_args = {"world_problems": "6", "world_samples": "8", "trials": "8", "bootstrap": "20"}
    problems: str = field(default="synthetic", metadata={"help": "problems JSONL, or 'synthetic'"})
    solutions: str = field(
        default="synthetic", metadata={"help": "solutions file, 'synthetic', or 'generate' (sample from --model)"}
    )
    format: str = field(default="harness", metadata={"help": "harness, prm800k, rlhflow, pqm or sal"})
    step_sep: str = field(
        default="\\n\\n", metadata={"help": "step separator for rlhflow dumps and generated pools (escapes allowed)"}
    )
    world_problems: int = field(default=200, metadata={"help": "synthetic world: problems"})
    world_samples: int = field(default=64, metadata={"help": "synthetic world: policy samples per problem"})
    # added after records were committed: at its default it stays out of run ids (harness.params)
    world_version: int = field(
        default=1,
        metadata={
            "help": "synthetic world version (harness.mathworld.world): its pools, and the world the verifiers fit on",
            "omit_at_default": True,
        },
    )
    n_max: int | None = field(default=None, metadata={"help": "largest N (None: the pool size)"})
    trials: int = field(default=200, metadata={"help": "Monte Carlo subsets per N for the voting metrics"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples over problems"})
    grader_timeout: float = field(default=5.0, metadata={"help": "seconds per math-verify comparison"})
    math_verify: bool = field(default=True, metadata={"help": "use math-verify after the exact checks"})
    samples: int = field(
        default=16, metadata={"help": "generate: solutions sampled per problem", "range": "[1, inf)", **GENERATION}
    )
    temperature: float = field(
        default=0.8, metadata={"help": "generate: sampling temperature", "range": "(0, inf)", **GENERATION}
    )
    top_p: float = field(
        default=1.0, metadata={"help": "generate: nucleus sampling mass", "range": "(0, 1]", **GENERATION}
    )
    max_new_tokens: int = field(
        default=2048, metadata={"help": "generate: new tokens per solution at most", "range": "[1, inf)", **GENERATION}
    )
    prompt: str = field(
        default="sal",
        metadata={"help": "generate: system prompt: 'sal' (search-and-learn's), 'none', or its text", **GENERATION},
    )

    def __post_init__(self):
        if self.generating:
            if self.format != "harness":
                raise ValueError(
                    "solutions=generate samples pools for a problems file (JSONL with 'problem' and 'answer', "
                    "the harness format) or for problems=synthetic: format stays 'harness'"
                )
        else:
            moved = [
                f.name for f in fields(self) if f.metadata.get("generation") and getattr(self, f.name) != f.default
            ]
            if moved:
                raise ValueError(
                    f"{', '.join(moved)} {'applies' if len(moved) == 1 else 'apply'} only to solutions=generate"
                )
        if self.world_version not in mathworld.VERSIONS:
            raise ValueError(f"world_version must be one of {', '.join(map(str, mathworld.VERSIONS))}")
        if self.format not in formats.FORMATS:
            raise ValueError(f"format must be one of {', '.join(formats.FORMATS)}")
        if (
            (self.problems == "synthetic") != (self.solutions == "synthetic")
            and self.format == "harness"
            and not self.generating
        ):
            raise ValueError("problems and solutions are both 'synthetic' or both files")
        if min(self.world_problems, self.world_samples, self.trials) < 1 or self.bootstrap < 0:
            raise ValueError("world_problems, world_samples and trials must be positive")
        if self.n_max is not None and self.n_max < 1:
            raise ValueError("n_max must be positive")

    @property
    def generating(self) -> bool:
        return self.solutions == "generate"

    def math_world(self) -> int:
        return self.world_version

    def uses_lm(self) -> bool:
        return self.generating  # the model only samples the pools; the verifiers bring their own

    def takes_chat_template(self) -> bool:
        return self.generating

    def check_model(self, model: str | None, loading) -> None:
        if not self.generating:
            return
        if model is None or model == "none":
            raise UserError(
                "math_prm_bon: solutions=generate samples the pools from a language model: name it with "
                "--model (a local checkpoint folder, hf:<id> from the local cache, or zoo:<name>)"
            )
        reason = models.generation_refusal(model)
        if reason:
            raise UserError(f"math_prm_bon: solutions=generate samples from a causal language model, but {reason}")

    @classmethod
    def report(cls, recs: list[dict]) -> str:
        """accuracy@N of each configuration's own pick (a row per method and parameters, its seeds
        as mean ± sd per N), under the oracle pass@N and majority@N rows (the same for every method
        on the same data), with the 95 % interval and weighted majority at each row's largest N
        (tasks/_prm_report.py)."""
        return _prm_report.tables(recs)

    # -- data ----------------------------------------------------------------------------------
    def load(self, seed: int, ctx=None) -> tuple[list[dict], dict[str, list[dict]], dict]:
        """(problems, pools by problem id, what the record keeps of where the pools came from);
        ctx (its LM and --limit) only for solutions=generate."""
        if self.generating:
            world = mathworld.world(self.world_version)
            synthetic = self.problems == "synthetic"  # the world's evaluation problems, solved by the LM
            base = mathworld.EVAL_SEED_BASE + 100_000 * seed
            probs = world.pools(self.world_problems, 0, base)[0] if synthetic else formats.load_problems(self.problems)
            if ctx.limit:  # sample only what is evaluated
                probs = probs[: ctx.limit]
            setting = sampled.Sampling(
                self.samples,
                self.temperature,
                self.top_p,
                self.max_new_tokens,
                seed,
                sampled.system_prompt(self.prompt),
            )
            sep = self.step_sep.encode().decode("unicode_escape")
            pools, pool = sampled.sampled_pools(ctx, probs, setting, sep)
            if synthetic:
                pool["world"] = {
                    "generator": world.__name__,
                    "base_seed": base,
                    "policy": f"the LM ({ctx.lm.loaded.id})",
                }
            return probs, pools, {"pool": pool}
        if self.solutions == "synthetic":
            base = mathworld.EVAL_SEED_BASE + 100_000 * seed
            world = mathworld.world(self.world_version)
            probs, sols = world.pools(self.world_problems, self.world_samples, base)
            pools: dict[str, list[dict]] = {}
            for s in sols:
                # the world's hidden step labels, as precomputed scores: a perfect process verifier
                oracle = [0.0 if e else 1.0 for e in s["step_errors"]]
                pools.setdefault(s["problem_id"], []).append(dict(s, correct=None, scores={"oracle_steps": oracle}))
            about = {
                "generator": world.__name__,
                "policy": "stochastic program (not an LM)",
                "policy_version": world.Policy().version,
                "base_seed": base,
            }
            return probs, pools, {"world": about}
        sep = self.step_sep.encode().decode("unicode_escape")
        probs, pools = formats.load(
            self.format, None if self.problems == "synthetic" else self.problems, self.solutions, sep
        )
        return probs, pools, {"world": {}}

    # -- evaluation ----------------------------------------------------------------------------
    def run(self, ctx) -> TaskResult:
        if len(ctx.methods) != 1:
            raise UserError("math_prm_bon evaluates one step_scorer method per cell")
        method = ctx.methods[0]
        probs, pools, source = self.load(ctx.seed, ctx)
        if ctx.limit:
            probs = probs[: ctx.limit]
        if not probs:
            raise UserError("math_prm_bon: no problems to evaluate")
        sizes = [len(pools.get(p["id"], [])) for p in probs]
        grid = bon.n_grid(max(sizes)) if max(sizes) else [1]
        if self.n_max:
            grid = sorted({n for n in grid if n < self.n_max} | {min(self.n_max, grid[-1])})
        grader = Grader(self.grader_timeout, self.math_verify)
        vote = method.selection == "vote"
        names = [
            f"{m}@{n}"
            for n in grid
            for m in ("accuracy", "majority", "pass") + (() if method.selection != "argmax" else ("weighted_majority",))
        ]
        per_problem: dict[str, list[float]] = {k: [] for k in names}
        trial_sums = {
            k: np.zeros(self.trials)
            for k in names
            if k.startswith(("majority", "weighted")) or (vote and k.startswith("accuracy"))
        }
        samples, scoring = (
            [],
            {"solutions": 0, "finite": 0, "problems": 0, "varied_answers": 0, "varied_scores": 0, "votes": 0},
        )
        try:
            for p in ctx.iterate(probs, total=len(probs), desc="math_prm_bon"):
                pool = pools.get(p["id"], [])
                row = self._problem(p, pool, method, vote, grid, grader, ctx.seed, scoring, per_problem, trial_sums)
                samples.append(row)
        finally:
            grader.close()
        metrics = {k: Metric.mean(v, "higher", "fraction", sample_field=k) for k, v in per_problem.items()}
        metrics["accuracy"] = Metric.mean(
            per_problem[f"accuracy@{grid[-1]}"], "higher", "fraction", sample_field=f"accuracy@{grid[-1]}"
        )
        details = {
            "grid": grid,
            "selection": method.selection,
            "grader": grader.info(),
            "pool_sizes": {"min": min(sizes), "max": max(sizes), "mean": sum(sizes) / len(sizes)},
            "intervals": {k: bon.bootstrap_interval(v, self.bootstrap, ctx.seed) for k, v in per_problem.items()},
            "interval_level": 0.95,
            "trial_std": {k: float(v.std() / len(probs)) for k, v in trial_sums.items()},
            "scoring": scoring,
            **source,
            "calibrated": True,
        }
        return TaskResult(metrics, samples, details, self._hash(probs, pools))

    def _problem(self, p, pool, method, vote, grid, grader, seed, scoring, per_problem, trial_sums) -> dict:
        m = len(pool)
        answers = [s["answer"] for s in pool]
        classes = grader.classes(answers)
        if p.get("answer") is not None:
            correct = [grader.equivalent(p["answer"], a) for a in answers]
        else:
            correct = [bool(s.get("correct")) for s in pool]
        k = max(classes) + 1 if classes else 0
        class_correct = [float(np.mean([c for c, cl in zip(correct, classes) if cl == j])) for j in range(k)]
        scores = weights = None
        if method.selection == "argmax" and m:
            steps = method.score_records(p, pool)
            if len(steps) != m:
                raise RuntimeError(f"{method.name} returned {len(steps)} score lists for {m} solutions")
            scores = [float(method.aggregate(st)) for st in steps]
            weights = [float(method.vote_weight(x)) for x in scores]
            if any(c >= 0 and (w < 0 or not math.isfinite(w)) for w, c in zip(weights, classes)):
                raise RuntimeError(f"{method.name}: vote weights must be finite and non-negative")
            scoring["solutions"] += m
            scoring["finite"] += sum(math.isfinite(x) for x in scores)
            scoring["varied_scores"] += len(set(scores)) > 1
        scoring["problems"] += 1
        scoring["varied_answers"] += len(set(classes)) > 1
        row = {
            "id": p["id"],
            "input_hash": sha256_text(p["problem"])[:16],
            "gold": p.get("answer"),
            "n": m,
            "answer_classes": k,
            "correct": [int(c) for c in correct],
        }
        if scores is not None:
            best = int(np.argmax(scores))
            row.update(prediction=answers[best], scores=[round(x, 6) for x in scores])
        for n in grid:
            idx = bon.subsets(m, n, self.trials, bon.subset_seed(seed, p["id"], n)) if m else None
            maj = bon.vote(classes, class_correct, [1.0] * m, idx) if m else np.zeros(self.trials)
            values = {"majority": maj, "pass": bon.pass_at(sum(correct), m, n)}
            if vote:
                values["accuracy"] = maj
                scoring["votes"] += int(idx.size) if m else 0
            elif method.selection == "search":  # the method generates: one search per N
                found = method.search(p, n, bon.subset_seed(seed, p["id"], n))
                values["accuracy"] = float(
                    grader.equivalent(p["answer"], found) if p.get("answer") is not None else 0.0
                )
                row.setdefault("search_answers", {})[str(n)] = found
            else:
                values["accuracy"] = bon.expected_argmax(scores, correct, n) if m else 0.0
                values["weighted_majority"] = (
                    bon.vote(classes, class_correct, weights, idx) if m else np.zeros(self.trials)
                )
            for name, v in values.items():
                key = f"{name}@{n}"
                if isinstance(v, np.ndarray):
                    trial_sums[key] += v
                    v = float(v.mean())
                per_problem[key].append(v)
                row[key] = round(v, 6)
        return row

    def _hash(self, probs, pools) -> str:
        content = [
            [p["id"], p["problem"], p.get("answer"), [[s["steps"], s["answer"]] for s in pools.get(p["id"], [])]]
            for p in probs
        ]
        return hashlib.sha256(canonical(content).encode()).hexdigest()
