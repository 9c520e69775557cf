"""On a GPU, do SelfExtend's, DCA's and LongHeads' fused partials (SDPA calls merged by
log-sum-exp, CUDA's memory-efficient kernel with an additive mask; LongHeads' tiles of (query,
chunk) pairs) compute what their explicit-logits reference computes? The CPU suite checks this on CPU only (tests/test_position_remapping.py); this runs the
same comparison on the device, at key counts that are not multiples of 8, and says whether any
partial fell back to explicit logits. Not a test: the GPU script runs it first.

    python benchmarks/gpu_fused_check.py [--device cuda] [--length 3001]

Relative error ||fused - reference|| / ||reference||: float32 should land far under 1e-3 (TF32
matmuls near 3e-4), bfloat16 under 1e-2."""

from __future__ import annotations

import argparse
import math

import torch


def rope_fn(d: int, device: str, dtype):
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))

    def rope(pos: torch.Tensor):
        ang = pos.to(torch.float32)[..., None] * inv
        emb = torch.cat([ang, ang], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    return rope


def inputs(length: int, heads: int, d: int, device: str, dtype, seed: int):
    from harness.attention import AttentionInputs

    g = torch.Generator(device).manual_seed(seed)
    q, k, v = (torch.randn(1, heads, length, d, device=device, generator=g).to(dtype) for _ in range(3))
    pos = torch.arange(length, device=device)[None]
    return AttentionInputs(q, k, v, pos, pos, None, 1 / math.sqrt(d), rope_fn(d, device, dtype))


def main() -> None:
    from harness import attention
    from harness.methods.rope.dca import DCA
    from harness.methods.rope.longheads import LongHeads
    from harness.methods.rope.selfextend import SelfExtend

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--length", type=int, default=3001)
    a = ap.parse_args()
    rules = {
        "selfextend": lambda x: SelfExtend.attend(x, 8, 512),  # G 8, W 512: both parts in play
        "dca": lambda x: DCA.attend(x, 1024, 768),  # chunk 768 < length: all three mappings
        # w 128, k 8: queries past 1,024 pick 8 chunks (a fresh instance each time: it keeps state)
        "longheads": lambda x: LongHeads(chunk_size=128, atten_length=1024).attend(x, 128, 8),
    }
    print(f"{'method':<11} {'dtype':<9} {'rel. error':>11} fell back")
    worst = {}
    for name, attend in rules.items():
        for dtype in (torch.float32, torch.bfloat16):
            attention._FELL_BACK.clear()
            x = inputs(a.length, 4, 64, a.device, dtype, seed=len(name))
            with torch.no_grad():
                fused = attend(x).float()
            fell = bool(attention._FELL_BACK)
            with torch.enable_grad():  # the explicit reference path
                ref = attend(x).float()
            err = float((fused - ref).norm() / ref.norm())
            worst[(name, str(dtype))] = err
            print(f"{name:<11} {str(dtype).removeprefix('torch.'):<9} {err:>11.2e} {fell}", flush=True)
    ok = all(e < (1e-3 if "float32" in k[1] else 1e-2) for k, e in worst.items())
    print("fused path matches its reference" if ok else "MISMATCH: see the errors above")


if __name__ == "__main__":
    main()
