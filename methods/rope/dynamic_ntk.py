from __future__ import annotations

from dataclasses import dataclass, field

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.rope._common import RopeMethod, inv_freq


@register
@dataclass
class DynamicNTK(RopeMethod, LMMethod):
    """Dynamic NTK scaling — emozilla 2023 (yarn repo `LlamaDynamicScaledRotaryEmbedding`;
    transformers' "dynamic"), a baseline in YaRN (arXiv:2309.00071).

    At current length l > L: b' = b · ((s·l/L) − (s−1))^(d/(d−2)); for l ≤ L the original base.
    The base is recomputed for every forward from its largest position, as transformers does,
    so keys cached at shorter lengths keep their older rotation (a known property of the method
    under a KV cache, kept here rather than hidden).

    factor: s; default None = target context / the model's original context (at least 1).
    """

    name = "dynamic_ntk"
    paper = "Dynamically scaled RoPE (emozilla, 2023); baseline in YaRN (arXiv:2309.00071)"
    ranges = {"factor": "[1, inf)"}  # checked by params.build before any model loads
    factor: float | None = field(default=None, metadata={"help": "scale s; None = derived from the task"})

    def freq_fn(self, shape, s):
        L = shape.original_max

        def fn(seq_len: int):
            length = max(seq_len, L)
            base = shape.base * ((s * length / L) - (s - 1)) ** (shape.dim / (shape.dim - 2))
            return inv_freq(base, shape.dim), 1.0

        return fn
