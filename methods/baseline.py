"""The unmodified model: the reference row of every table."""

from __future__ import annotations

from dataclasses import dataclass

from harness.interfaces import LMMethod
from harness.registry import register


@register
@dataclass
class Baseline(LMMethod):
    """No change to the model (dense attention, original RoPE)."""

    name = "baseline"
    family = "baseline"

    def check_effect(self, lm, ctx, result):
        return None  # the identity by definition: nothing to verify
