from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.registry import register
from harness.methods.kv._cache import LayerCache, REFERENCE_BYTES
from harness.methods.kv._common import KVMethod
from harness.methods.kv._quant import quant_bytes, quantize_groups
from harness.methods.kv._run import Run


def value_group(group: int, head_dim: int) -> int:
    """Channel group for per-token quantization: `group`, or its largest divisor of head_dim."""
    return math.gcd(group, head_dim)


@register
@dataclass
class KIVI(KVMethod):
    """KIVI — Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"
    (arXiv:2402.02750); rule from jy-yuan/KIVI `models/llama_kivi.py`, `utils_quant.py`; defaults
    of its `example.py` (2 bits, group 32, residual 32; the paper's main setting uses R = 128).

    Asymmetric min-max fake quantization (x̂ = round((x−min)/s)·s + min, s = (max−min)/(2^B−1)).
    Keys per channel: groups of `group_size` consecutive tokens of a channel, flushed in blocks of
    `residual_length` (prefill quantizes all but L mod R keys). Values per token: groups of
    channels (`group_size`, or its gcd with head_dim when it does not divide), the newest R values
    full precision, the oldest leaving the residual one at a time. Simulated exactly on CPU (the
    CUDA kernels are not needed for the numbers); bytes counted as bits + fp16 scale and zero per
    group + fp16 residual. Compresses: prefill and decoding. The budget is not used (bits)."""

    name = "kivi"
    paper = "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache (arXiv:2402.02750)"
    compresses = "both"
    budget_unit = "bits"
    smoke_args = {"residual_length": "16", "group_size": "16"}
    ranges = {
        "k_bits": "[1, 16]",
        "v_bits": "[1, 16]",
        "group_size": "[1, inf)",
        "residual_length": "[0, inf)",
    }  # checked by params.build before any model loads
    k_bits: int = 2
    v_bits: int = 2
    group_size: int = 32
    residual_length: int = field(default=32, metadata={"help": "full-precision recent tokens R (R % group_size == 0)"})

    def __post_init__(self):
        super().__post_init__()
        if not (1 <= self.k_bits <= 16 and 1 <= self.v_bits <= 16) or self.group_size < 1:
            raise ValueError("bits must be in 1..16 and group_size positive")
        if self.residual_length < self.group_size or self.residual_length % self.group_size:
            raise ValueError("residual_length must be a positive multiple of group_size (KIVI asserts it)")

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        n = lc.n - run.protect
        lc.state["nk"] = lc.state["nv"] = 0
        self.flush(
            lc,
            run,
            keys=n - n % self.residual_length if n >= self.residual_length else 0,
            values=max(0, n - self.residual_length),
        )

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        full_k = lc.n - run.protect - lc.state["nk"]
        full_v = lc.n - run.protect - lc.state["nv"]
        self.flush(lc, run, keys=full_k - full_k % self.residual_length, values=max(0, full_v - self.residual_length))

    def flush(self, lc: LayerCache, run: Run, keys: int, values: int) -> None:
        """Quantize the next `keys` keys and `values` values after the already quantized ones."""
        p = run.protect
        if keys:
            a = p + lc.state["nk"]
            k = lc.k.clone()
            k[:, :, a : a + keys] = quantize_groups(k[:, :, a : a + keys], self.k_bits, self.group_size, "token")
            lc.replace(k=k)
            lc.state["nk"] += keys
        if values:
            a = p + lc.state["nv"]
            v = lc.v.clone()
            g = value_group(self.group_size, v.shape[-1])
            v[:, :, a : a + values] = quantize_groups(v[:, :, a : a + values], self.v_bits, g, "channel")
            lc.replace(v=v)
            lc.state["nv"] += values

    def layer_bytes(self, lc: LayerCache, run: Run) -> float:
        h, d = lc.k.shape[1], lc.k.shape[-1]
        nk, nv = lc.state.get("nk", 0), lc.state.get("nv", 0)
        return (
            quant_bytes(nk * h * d, self.k_bits, self.group_size)
            + quant_bytes(nv * h * d, self.v_bits, value_group(self.group_size, d))
            + (2 * lc.n - nk - nv) * h * d * REFERENCE_BYTES
        )
