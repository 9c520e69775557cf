from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.kv._cache import LayerCache, REFERENCE_BYTES
from harness.methods.kv._common import KVMethod
from harness.methods.kv._run import Run


def low_rank_weight(w: torch.Tensor, rank: int, svd=None) -> torch.Tensor:
    """Best rank-`rank` approximation of a projection weight [out, in] (Eckart–Young)."""
    u, s, vh = svd if svd is not None else torch.linalg.svd(w.float(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).to(w.dtype)


@register
@dataclass
class SVDKV(KVMethod):
    """SVD-KV — after Yu et al. 2024, "Effectively Compress KV Heads for LLM" (arXiv:2406.07056).

    The key and value projections W_k, W_v [H_kv·d, hidden] are replaced by their rank-r SVD
    truncations U_r S_r V_rᵀ: the cache holds the r-dimensional latents x V_r (keys rotated by
    RoPE after the up-projection U_r S_r, as the paper keeps RoPE outside the compression), so
    every token stays but each holds r instead of H_kv·d numbers per K and V. r = round(budget ·
    H_kv·d) ("bytes" budget: the fraction of dense cache bytes). The paper fits the projections
    to the SVD of calibration KV activations; this variant uses the weights alone (data-free)
    [our choice: no calibration data offline]. Compresses: every token, at projection time."""

    name = "svd_kv"
    paper = "Effectively Compress KV Heads for LLM (arXiv:2406.07056)"
    compresses = "both"
    budget_unit = "bytes"
    budget: float = field(default=0.5, metadata={"help": "kept fraction of the K/V dimensions (and bytes)"})

    def prepare(self, lm) -> None:
        self._svd = {}

    def rank(self, module, run: Run) -> int:
        full = module.k_proj.weight.shape[0]
        return (
            full if run.dense else max(1, min(full, round(run.budget * full) if run.budget <= 1 else int(run.budget)))
        )

    def project_kv(self, module, hidden: torch.Tensor, run: Run):
        r = self.rank(module, run)
        if r == module.k_proj.weight.shape[0]:
            return module.k_proj(hidden), module.v_proj(hidden)
        key = (module.layer_idx, r)
        if key not in self._svd:
            self._svd = {k: w for k, w in self._svd.items() if k[0] != module.layer_idx}
            self._svd[key] = tuple(low_rank_weight(p.weight, r) for p in (module.k_proj, module.v_proj))
        wk, wv = self._svd[key]
        k = torch.nn.functional.linear(hidden, wk, module.k_proj.bias)
        v = torch.nn.functional.linear(hidden, wv, module.v_proj.bias)
        return k, v

    def layer_bytes(self, lc: LayerCache, run: Run) -> float:
        full = lc.k.shape[1] * lc.k.shape[-1]
        r = full if run.dense else max(1, min(full, round(run.budget * full) if run.budget <= 1 else int(run.budget)))
        return 2 * lc.n * r * REFERENCE_BYTES
