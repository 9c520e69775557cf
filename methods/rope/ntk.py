from __future__ import annotations

from dataclasses import dataclass, field

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.rope._common import RopeMethod, inv_freq


@register
@dataclass
class NTK(RopeMethod, LMMethod):
    """NTK-aware scaled RoPE (static) — bloc97 2023, as in the YaRN paper's baselines
    (Peng et al., arXiv:2309.00071; yarn repo `LlamaNTKScaledRotaryEmbedding`).

    b' = b · alpha^(d/(d-2)): high frequencies are nearly untouched, the lowest frequency is
    interpolated by about alpha. Training-free.

    alpha: default None = target context / the model's original context (at least 1).
    """

    name = "ntk"
    factor_field = "alpha"
    paper = "NTK-aware scaled RoPE (bloc97, 2023); baseline in YaRN (arXiv:2309.00071)"
    ranges = {"alpha": "[1, inf)"}  # checked by params.build before any model loads
    alpha: float | None = field(default=None, metadata={"help": "NTK alpha; None = derived from the task"})

    def freq_fn(self, shape, s):
        base = shape.base * s ** (shape.dim / (shape.dim - 2))
        inv = inv_freq(base, shape.dim)
        return lambda seq_len: (inv, 1.0)
