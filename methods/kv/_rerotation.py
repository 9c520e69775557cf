"""RoPE re-rotation of cached keys (StreamingLLM's cache-relative positions): RoPE(a)·RoPE(b) =
RoPE(a+b), kvpress's KeyRerotationPress, and the frequencies the rotary module applies now."""

from __future__ import annotations

import torch

from harness.attention import rotate


def rerotate(k: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys rotated by RoPE at p, re-rotated to p + delta: k' = k cos(δθ) + rotate_half(k) sin(δθ).
    k [b, h, n, d], delta [b, h, n]; uses inv_freq only (no attention scaling, which the key
    already carries)."""
    ang = delta.to(torch.float32).unsqueeze(-1) * inv_freq.to(k.device)
    ang = torch.cat((ang, ang), dim=-1)
    b, h, n, _ = k.shape
    cos, sin = ang.cos().to(k.dtype), ang.sin().to(k.dtype)
    return rotate(k.reshape(b * h, 1, n, -1), cos.reshape(b * h, n, -1), sin.reshape(b * h, n, -1)).reshape(k.shape)


def rerotation_angles(delta: float, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [1, 1, r] of one constant re-rotation by `delta` positions (for `rotate`); the
    angles in float64, so that a large delta loses nothing before cos/sin."""
    ang = float(delta) * inv_freq.double().reshape(1, -1)  # on inv_freq's device
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos().to(dtype)[None], ang.sin().to(dtype)[None]


def effective_inv_freq(rotary) -> torch.Tensor:
    """The frequencies the rotary module applies now (a RoPE-scaling method composed before the kv
    method, e.g. yarn+streaming_llm, may have patched it): the angle at position 1, read back from
    its cos/sin (the attention factor cancels in atan2)."""
    x = rotary.inv_freq.new_zeros(1, 1, 1).float()
    cos, sin = rotary(x, torch.ones(1, 1, dtype=torch.long, device=x.device))
    return torch.atan2(sin, cos)[0, 0, : cos.shape[-1] // 2].float()
