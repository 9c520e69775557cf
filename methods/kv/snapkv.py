from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._eviction import keep_top, window_attention
from harness.methods.kv._run import Run


def snapkv_scores(queries: torch.Tensor, keys: torch.Tensor, scaling: float, kernel: int, pooling: str) -> torch.Tensor:
    """Per-KV-head scores [1, H_kv, n]: the window queries' attention over the keys before the
    window (mean over window queries), pooled along the sequence, averaged over the KV head's
    query heads; the window's own keys score the maximum + 1 (kvpress `SnapKVPress`), so they are
    always kept first and never tie with the best earlier token."""
    w = queries.shape[2]
    probs = window_attention(queries, keys, scaling)  # [1, H_kv, g, w, n]
    s = probs[..., : keys.shape[2] - w].mean(dim=3)  # [1, H_kv, g, n - w]
    b, hkv, g, n = s.shape
    if n and kernel > 1:
        pool = F.avg_pool1d if pooling == "avgpool" else F.max_pool1d
        s = pool(s.reshape(b * hkv * g, 1, n), kernel_size=kernel, stride=1, padding=kernel // 2).reshape(b, hkv, g, -1)
    s = s.mean(dim=2)
    top = float(s.max()) + 1 if s.numel() else 1.0
    return F.pad(s, (0, w), value=top)


@register
@dataclass
class SnapKV(KVMethod):
    """SnapKV — Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation"
    (arXiv:2404.14469); rule from FasterDecoding/SnapKV `snapkv_utils.py`, defaults and the
    GQA / budget handling of kvpress `SnapKVPress` (window 64, kernel 5, avgpool).

    At prefill the last `window_size` queries attend (causally inside the window) to every key;
    s_j = mean over the window of softmax(q·k/√d)_j for keys before the window, pooled with a 1-D
    filter of `kernel_size`, averaged over the query heads of each KV head. The window keys score
    highest; each head keeps its top-`budget` tokens. Compresses: prefill only (the cache grows
    while decoding). The scores come from the stored window queries (SDPA-compatible: never an
    L x L matrix). Query-aware only when the question is inside the window."""

    name = "snapkv"
    paper = "SnapKV: LLM Knows What You are Looking for Before Generation (arXiv:2404.14469)"
    compresses = "prefill"
    ranges = {"window_size": "[1, inf)", "kernel_size": "[1, inf)"}  # checked by params.build before any model loads
    window_size: int = field(default=64, metadata={"help": "observation window (kvpress 64; SnapKV paper configs 32)"})
    kernel_size: int = field(default=5, metadata={"help": "pooling kernel (kvpress 5; paper configs 7)"})
    pooling: str = field(default="avgpool", metadata={"help": "avgpool or maxpool"})

    def __post_init__(self):
        super().__post_init__()
        if self.window_size < 1 or self.kernel_size < 1:
            raise ValueError("window_size and kernel_size must be positive")
        if self.pooling not in ("avgpool", "maxpool"):
            raise ValueError("pooling must be avgpool or maxpool")

    def query_window(self) -> int:
        return self.window_size

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        if lc.n <= run.target:
            return
        w = min(self.window_size, lc.n, lc.queries.shape[2])
        scores = snapkv_scores(lc.queries[:, :, -w:], lc.k, run.scaling, self.kernel_size, self.pooling)
        keep_top(lc, scores, run.target)
