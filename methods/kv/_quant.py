"""Fake quantization of cached keys and values (KIVI, GEAR): the values are rounded to the grid
exactly as the kernels would, the bytes counted analytically (bits, scales and zero points)."""

from __future__ import annotations

import torch
from harness.methods.kv._cache import REFERENCE_BYTES


def quantize(x: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Asymmetric min-max fake quantization along `dim` (KIVI/GEAR): s = (max - min)/(2^B - 1),
    q = round((x - min)/s) clamped to [0, 2^B - 1], x̂ = q s + min. Groups are the other axes."""
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((x - lo) / safe), 0, levels)
    return torch.where(scale > 0, q * scale + lo, lo)


def quantize_groups(x: torch.Tensor, bits: int, group: int, axis: str) -> torch.Tensor:
    """Fake-quantize x [b, h, n, d] in groups of `group` elements: axis "token" = per-channel
    (groups of consecutive tokens of one channel: KIVI's keys), "channel" = per-token (groups of
    consecutive channels of one token: KIVI's values). The grouped length must divide evenly."""
    b, h, n, d = x.shape
    if axis == "token":
        if n % group:
            raise ValueError(f"{n} tokens do not split into groups of {group}")
        return quantize(x.reshape(b, h, n // group, group, d), bits, dim=3).reshape(b, h, n, d)
    if d % group:
        raise ValueError(f"head_dim {d} does not split into groups of {group}")
    return quantize(x.reshape(b, h, n, d // group, group), bits, dim=4).reshape(b, h, n, d)


def quant_bytes(elements: int, bits: int, group: int) -> float:
    """Bytes of `elements` quantized values at `bits` plus one fp16 scale and zero point per group."""
    return elements * bits / 8 + (elements / group) * 2 * REFERENCE_BYTES
