from __future__ import annotations

from dataclasses import dataclass

from harness.interfaces import StepScorer
from harness.registry import register


@register
@dataclass
class Majority(StepScorer):
    """Majority voting (self-consistency) — Wang et al. 2022, "Self-Consistency Improves Chain of
    Thought Reasoning in Language Models" (arXiv:2203.11171); the PRM papers' voting baseline.

    No model: the pick is the most frequent answer class among the N solutions (grader-equivalence
    classes; ties average the tied classes' correctness), so its accuracy@N equals majority@N."""

    name = "majority"
    family = "prm"
    paper = "Self-Consistency Improves Chain of Thought Reasoning in Language Models (arXiv:2203.11171)"
    selection = "vote"
    smoke_args = {}

    def check_effect(self, lm, ctx, result) -> str | None:
        sc = result.details.get("scoring", {})
        if not sc.get("votes"):
            return "majority counted no votes (no problem had solutions)"
        return None
