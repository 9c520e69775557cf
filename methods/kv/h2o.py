from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._eviction import evict_outside_window
from harness.methods.kv._run import Run


def evict_heavy_recent(lc: LayerCache, m: int, heavy_share: float, score=None, lead: int = 0) -> None:
    """Keep the newest m − ⌊m·heavy_share⌋ tokens and the highest-scoring rest (H2O's split);
    score(a, b): slots a..b-1's score (default: the accumulated attention)."""
    evict_outside_window(lc, m, m - int(m * heavy_share), score or (lambda a, b: lc.score[:, :, a:b]), lead)


@register
@dataclass
class H2O(KVMethod):
    """H2O — Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
    Large Language Models" (arXiv:2306.14048); rule from FMInference/H2O `utils_real_drop`.

    Score per KV head: accumulated attention S_j = Σ_t A_{t,j} over every query so far (prefill
    queries by chunks, then each decoding step), summed over the head's query heads. The cache
    keeps a recent window and the heavy hitters (top S among the rest); official defaults
    heavy_ratio = recent_ratio = 0.1 of the prompt, i.e. budget 0.2 split 50/50. Compresses:
    prefill and every decoding step (the cache stays at the budget)."""

    name = "h2o"
    paper = "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models (arXiv:2306.14048)"
    compresses = "both"
    accumulates = True
    all_layers = True
    ranges = {"heavy_share": "[0, 1]"}  # checked by params.build before any model loads
    budget: float = field(
        default=0.2, metadata={"help": "kept tokens (official: heavy 0.1 + recent 0.1 of the prompt)"}
    )
    heavy_share: float = field(default=0.5, metadata={"help": "heavy hitters' share of the budget (rest: recent)"})

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.heavy_share <= 1:
            raise ValueError("heavy_share must be in [0, 1]")

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        evict_heavy_recent(lc, run.target, self.heavy_share)

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        evict_heavy_recent(lc, run.target, self.heavy_share)
