from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import UserError
from harness.registry import register
from harness.methods.prm._common import PRMScorer


@register
@dataclass
class Precomputed(PRMScorer):
    """Scores computed elsewhere and stored with the solutions (the `scores` field of the harness
    format; the prm800k importer stores PRM800K's `prm_score`/`orm_score` as `prm800k_prm` /
    `prm800k_orm`, the sal importer search-and-learn's per-step `scores` as `sal`), aggregated
    like any PRM's step scores. Lets published scored dumps be compared under this task's
    estimators — e.g. PRM800K's released scores of its own PRM (Lightman et al.). On the synthetic
    world, `oracle_steps` holds the world's hidden step labels (1 clean, 0 erroneous): a perfect
    process verifier, the ceiling for the trained PRMs."""

    name = "precomputed"
    paper = "Let's Verify Step by Step (arXiv:2305.20050)"
    smoke_args = {"key": "oracle_steps"}
    key: str = field(default="prm800k_prm", metadata={"help": "name under the solutions' `scores`"})

    def score_records(self, problem: dict, solutions: list[dict]) -> list[list[float]]:
        out = []
        for s in solutions:
            if self.key not in (s.get("scores") or {}):
                raise UserError(
                    f"precomputed: a solution of problem {problem['id']!r} has no scores[{self.key!r}] "
                    f"(has: {', '.join(s.get('scores') or {}) or 'none'})"
                )
            out.append([float(x) for x in s["scores"][self.key]])
        return out
