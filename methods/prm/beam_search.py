from __future__ import annotations

import random
from dataclasses import dataclass, field

from harness import artifacts, mathworld, params, registry
from harness.errors import UserError
from harness.registry import register
from harness.methods.prm._common import PRMScorer, aggregate


@register
@dataclass
class BeamSearch(PRMScorer):
    """PRM-guided beam search — Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be
    More Effective than Scaling Model Parameters" (arXiv:2408.03314); the loop of
    huggingface/search-and-learn `beam_search.py` (anchors-prm §4.5).

    A decoding method for the synthetic world (it needs the world's policy to propose steps): with
    budget N, N partial solutions each get one next step from the policy; the PRM scores every
    prefix (aggregation `agg`, "last" as in search-and-learn); the top N / M survive and are
    duplicated M times (M = `beam_width`, 4), until every beam has finished (answered, or the
    policy gave up). The answer is that of the highest-scored finished
    beam. N policy steps per depth: the same generation budget as best-of-N with N samples.

    prm: a PRM trained on the world (math_shepherd, pav, pqm, orm), prm_args its parameters
    ("estimation=soft,epochs=4"); `harness fit --method beam_search` reuses (or trains) that
    PRM's own artifact."""

    name = "beam_search"
    paper = (
        "Scaling LLM Test-Time Compute Optimally can be More Effective than Scaling Model Parameters (arXiv:2408.03314)"
    )
    selection = "search"
    smoke_args = {"prm_args": "problems=3,samples=2,rollouts=2,epochs=1,d_model=16,layers=1"}
    ranges = {"beam_width": "[1, inf)"}  # checked by params.build before any model loads
    agg: str = field(default="last", metadata={"help": "min, product, last or mean over the prefix's step scores"})
    prm: str = field(default="math_shepherd", metadata={"help": "the world PRM that guides the search"})
    prm_args: str = field(default="", metadata={"help": "its parameters, k=v separated by commas"})
    beam_width: int = field(default=4, metadata={"help": "M: copies of each surviving beam"})

    def __post_init__(self):
        super().__post_init__()
        if self.beam_width < 1:
            raise ValueError("beam_width must be at least 1")
        cls = registry.method(self.prm)
        if not hasattr(cls, "outputs_at_markers"):
            raise ValueError(f"prm must be a PRM trained on the synthetic world, not {self.prm}")
        pairs = [kv.split("=", 1) for kv in self.prm_args.split(",") if kv.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("prm_args must be k=v pairs separated by commas")
        self.inner = params.build(cls, {k.strip(): v.strip() for k, v in pairs}, f"method {self.prm}")
        self.searches = 0

    def needs_fit(self, lm, ctx) -> bool:
        return True

    def fit_params(self, lm, ctx) -> dict:
        return {"prm": self.prm, "prm_params": self.inner.fit_params(lm, ctx)}

    def fit_data_hash(self, lm, ctx) -> str:
        return self.inner.fit_data_hash(lm, ctx)

    def fit(self, lm, ctx, log=print):
        key = artifacts.key_for(self.inner, lm, ctx, None)
        reused = artifacts.load(key) is not None
        if not reused:
            log(f"beam_search: training its PRM {self.prm} first (artifact {key})")
            payload, write = self.inner.fit(lm, ctx, log=log)
            artifacts.save(
                key,
                dict(
                    payload,
                    method=self.prm,
                    model="none",
                    fit_params=self.inner.fit_params(lm, ctx),
                    data_hash=self.inner.fit_data_hash(lm, ctx),
                ),
                write,
            )
        # a reused PRM cost its own fit: the record's fit cost adds it (harness.fitting.cost)
        return {"prm_artifact": key, **({"reused_artifacts": [key]} if reused else {})}, None

    def use_artifact(self, payload, folder) -> None:
        key = payload["prm_artifact"]
        inner = artifacts.load(key)
        if inner is None:
            raise UserError(f"beam_search: its PRM artifact {key} is gone; rerun `harness fit --method beam_search`")
        self.inner.use_artifact(inner, artifacts.folder(key))

    def search(self, problem: dict, n: int, seed: int) -> str | None:
        """The answer beam search finds with budget n (None: no beam reached an answer)."""
        prob = _world_problem(problem)
        world = mathworld.world_of(prob)
        policy, rng = world.Policy(), random.Random(seed)
        budget, m = n, min(self.beam_width, n)
        beams: list[list] = [[] for _ in range(n)]  # the world's Steps
        done: list[tuple[float, list]] = []
        while beams:
            cands = [b + [policy.next_step(prob, b, rng)] for b in beams]
            outs = self.inner.outputs_at_markers(problem["problem"], [[s.text for s in c] for c in cands], cache=False)
            scored = [(aggregate(self.inner.read(o), self.agg), i) for i, o in enumerate(outs)]
            live = []
            for sc, i in sorted(scored, key=lambda t: -t[0]):
                c = cands[i]
                if world.finished(prob, c):
                    done.append((sc, c))
                elif len(live) < max(1, budget // m):
                    live.append(c)
            beams = [live[i % len(live)] for i in range(budget)] if live else []  # back to N beams
        self.searches += 1
        best = max(done, key=lambda t: t[0])[1]
        return world.final_answer(prob, best)

    def check_effect(self, lm, ctx, result) -> str | None:
        return None if self.searches else "beam_search ran no search"


def _world_problem(problem: dict) -> mathworld.Problem:
    prob = mathworld.lookup(problem)
    if prob is None:
        raise UserError(
            "beam_search runs on the synthetic world only (it needs the world's policy to propose "
            f"steps); problem {str(problem['id'])!r} is not one of its problems"
        )
    return prob
