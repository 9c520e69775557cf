from __future__ import annotations

from dataclasses import dataclass, field

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.rope._common import RopeMethod, inv_freq


@register
@dataclass
class PI(RopeMethod, LMMethod):
    """Position Interpolation — Chen et al. 2023, "Extending Context Window of Large Language
    Models via Positional Interpolation" (arXiv:2306.15595).

    f'(x, m) = f(x, m·L/L'), i.e. theta_i' = theta_i / s with s = L'/L (transformers' "linear").
    The paper fine-tunes ~1000 steps after interpolating; this row is the training-free use.

    factor: s; default None = target context / the model's original context (at least 1).
    """

    name = "pi"
    paper = "Extending Context Window of LLMs via Positional Interpolation (arXiv:2306.15595)"
    ranges = {"factor": "[1, inf)"}  # checked by params.build before any model loads
    factor: float | None = field(default=None, metadata={"help": "scale s; None = derived from the task"})

    def freq_fn(self, shape, s):
        inv = inv_freq(shape.base, shape.dim) / s
        return lambda seq_len: (inv, 1.0)
