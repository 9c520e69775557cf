from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._eviction import keep_top, recent
from harness.methods.kv._run import Run


def nearest_kept(kept: torch.Tensor) -> torch.Tensor:
    """For each slot [1, H, n], the index of the nearest kept slot (left on ties)."""
    n = kept.shape[-1]
    ar = torch.arange(n, device=kept.device).expand_as(kept)
    left = torch.where(kept, ar, torch.full_like(ar, -1)).cummax(-1).values
    right = torch.where(kept, ar, torch.full_like(ar, n)).flip(-1).cummin(-1).values.flip(-1)
    use_left = (left >= 0) & ((right >= n) | (ar - left <= right - ar))
    return torch.where(use_left, left, right)


def gaussian_merge(k, v, kept, target, sim, threshold):
    """Merge every dropped slot whose key has cosine similarity ≥ threshold with its nearest kept
    slot (the pivot) into it: w_i = g_i/Σg, g_i = exp(−‖k_p − k_i‖²/(2σ²)), σ² the set's mean
    squared distance to the pivot (its RMS distance); the pivot has g = 1. Returns merged k, v."""
    joins = (~kept) & (sim >= threshold)
    d2 = ((k - k.gather(2, target.unsqueeze(-1).expand_as(k))) ** 2).sum(-1) * joins  # [1, H, n]
    zeros = torch.zeros_like(d2)
    sum_d2 = zeros.scatter_add(2, target, d2)
    count = zeros.scatter_add(2, target, joins.float())
    sigma2 = (sum_d2 / count.clamp(min=1)).gather(2, target).clamp(min=1e-12)
    g = torch.where(joins, torch.exp(-d2 / (2 * sigma2)), zeros) + kept.float()  # pivot: 1
    norm = zeros.scatter_add(2, target, g)
    idx = target.unsqueeze(-1).expand_as(k)
    mk = torch.zeros_like(k).scatter_add(2, idx, k * g.unsqueeze(-1)) / norm.clamp(min=1e-12).unsqueeze(-1)
    mv = torch.zeros_like(v).scatter_add(2, idx, v * g.unsqueeze(-1)) / norm.clamp(min=1e-12).unsqueeze(-1)
    return torch.where(kept.unsqueeze(-1), mk, k), torch.where(kept.unsqueeze(-1), mv, v)


@register
@dataclass
class KVMerger(KVMethod):
    """KVMerger — Wang et al. 2024, "Model Tells You Where to Merge: Adaptive KV Cache Merging for
    LLMs on Long-Context Tasks" (arXiv:2407.08454); no official code, rule from the paper (and a
    community file's threshold 0.75 and RMS σ).

    Per layer and head at prefill: the pivots are the budget's tokens of largest aggregated
    attention (plus the recent window, H2O's split); every other token whose key is similar
    (cosine ≥ `threshold`) to its nearest pivot joins that pivot's merging set, and the set
    becomes one state by the Gaussian kernel g_i = exp(−‖k_p − k_i‖²/(2σ²)), w_i = g_i/Σg:
    k = Σ w_i k_i, v = Σ w_i v_i. Tokens too dissimilar to any pivot are dropped. Compresses:
    prefill only (the cache grows while decoding).

    Simplified against the paper (Sections 4.1–4.2; no official code to compare with):
    - Merging sets: the paper scans the keys and groups *consecutive* tokens whose adjacent keys
      are similar above the threshold, then picks each set's pivot as its member of largest
      aggregated attention. Here the pivots come first (top aggregated attention within the
      budget, plus the recent window: `heavy_share`, H2O's split [our choice]) and every evicted
      token joins its *nearest* pivot (left on ties) if its own key's cosine with the pivot's key
      reaches the threshold; no chain of adjacent similarities is followed, so a set can hold
      tokens on both sides of its pivot and skip dissimilar ones.
    - Threshold: one value for every layer and head (0.75, the community file's); the paper
      chooses the similarity threshold per layer from the persistent similarity pattern.
    - σ: the set's RMS distance to its pivot (σ² = mean ‖k_p − k_i‖², the community file's
      choice), not checked against the paper's definition. The pivot's own weight is g = 1.
    - Aggregated attention: accumulated over every prompt query (H2O's score), summed over the KV
      head's query heads (GQA)."""

    name = "kvmerger"
    paper = (
        "Model Tells You Where to Merge: Adaptive KV Cache Merging for LLMs on Long-Context Tasks (arXiv:2407.08454)"
    )
    compresses = "prefill"
    accumulates = True
    ranges = {"threshold": "[-1, 1]", "heavy_share": "[0, 1]"}  # checked by params.build before any model loads
    threshold: float = field(default=0.75, metadata={"help": "key cosine similarity to join a merging set"})
    heavy_share: float = field(default=0.5, metadata={"help": "attention-chosen pivots' share of the budget"})

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        m = run.target
        if lc.n <= m:
            return
        s = lc.score.masked_fill(recent(lc, m - int(m * self.heavy_share)), float("inf"))
        top = s.topk(m, dim=-1).indices
        kept = torch.zeros_like(s, dtype=torch.bool).scatter(2, top, True)
        target = nearest_kept(kept)
        k, v = lc.k, lc.v
        sim = F.cosine_similarity(k, k.gather(2, target.unsqueeze(-1).expand_as(k)), dim=-1)
        mk, mv = gaussian_merge(k, v, kept, target, sim, self.threshold)
        lc.replace(k=mk, v=mv)
        lc.state["merged"] = int(((~kept) & (sim >= self.threshold)).sum())
        keep_top(lc, kept.float(), m)
