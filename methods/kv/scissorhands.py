from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._eviction import evict_outside_window
from harness.methods.kv._run import Run


@register
@dataclass
class Scissorhands(KVMethod):
    """Scissorhands — Liu et al. 2023, "Scissorhands: Exploiting the Persistence of Importance
    Hypothesis for LLM KV Cache Compression at Test Time" (arXiv:2305.17118); no official code —
    rule from the paper's Algorithm 2 and the community cold-compress `KVCacheHeavyHitter`.

    Persistence of importance: a token's score is how many of the last `history_window` queries
    (400, "the default specified in the paper") gave it attention ≥ the uniform level 1/t (t =
    tokens that query sees), counted over the KV head's query heads. Kept: the `global_tokens`
    first tokens (cold-compress: 4), the newest `recent_share` of the budget, and the highest
    counts; the rest is dropped at prefill and whenever decoding pushes the cache over budget.
    The history is an exact sliding window: a ring of per-query indicators that moves with the
    tokens, and each slot's count, updated as a query enters the window and the one it replaces in
    the ring leaves.

    Simplified or chosen against the paper (Algorithm 2 and Section 4):
    - Cadence: the paper lets the cache grow to B and then drops m tokens at once (so it holds
      between B − m and B); here the cache is brought back to exactly B after every fed token or
      chunk (m = the tokens over budget, usually 1). There is no `m` parameter.
    - The first `global_tokens` are always kept (cold-compress's attention sinks; not in the paper).
    - The recent window r is not given a value by the paper; recent_share = 0.5 of the budget
      follows H2O's split [our choice].
    - Counts are per KV head, summed over its query heads (GQA); with one query head per KV head
      (the paper's MHA models) they are the paper's per-head counts.
    - The uniform level 1/t uses t = the slots the query sees (tokens already evicted are not
      counted), and at prefill the counts come from the last `history_window` prompt queries, then
      one eviction to budget.
    - Ties in the counts (common: they are integers) evict the oldest token [our choice; the
      reference's topk leaves them to the device's kernel], so that CPU and GPU keep the same set."""

    name = "scissorhands"
    paper = (
        "Scissorhands: Exploiting the Persistence of Importance Hypothesis for LLM KV Cache "
        "Compression at Test Time (arXiv:2305.17118)"
    )
    compresses = "both"
    accumulates = True
    all_layers = True
    ranges = {
        "history_window": "[1, inf)",
        "global_tokens": "[0, inf)",
        "recent_share": "[0, 1]",
    }  # checked by params.build before any model loads
    history_window: int = field(default=400, metadata={"help": "queries whose attention is counted (paper: 400)"})
    global_tokens: int = field(default=4, metadata={"help": "first tokens always kept (cold-compress: 4)"})
    recent_share: float = field(default=0.5, metadata={"help": "share of the budget kept as the newest tokens"})

    def __post_init__(self):
        super().__post_init__()
        if self.history_window < 1 or self.global_tokens < 0 or not 0 <= self.recent_share <= 1:
            raise ValueError("history_window >= 1, global_tokens >= 0, recent_share in [0, 1]")

    def observe(self, lc: LayerCache, probs, logits, run: Run) -> None:
        w, q0, c = self.history_window, run.query_start, probs.shape[3]  # queries q0 .. q0 + c - 1
        first = max(run.n_context - w if run.phase == "prefill" else 0, q0 + c - w)
        lo = max(0, first - q0)  # queries inside the history window
        if lo >= c:
            return
        if lo:
            probs, logits = probs[:, :, :, lo:], logits[:, :, :, lo:]
        if probs.shape[3] == 1 and lc.valid is None:  # one decoding query sees every slot
            visible = lc.n
        else:
            visible = torch.isfinite(logits).sum(-1, keepdim=True).clamp(min=1)
        above = probs >= 1.0 / visible  # [1, H_kv, g, c, n]
        ring = lc.slot("history", 0, torch.uint8, (w,))
        count = lc.slot("count", 0, torch.int32)
        if above.shape[3] == 1:  # one query: a column of the ring (a view)
            b, h, g, _, n = above.shape
            hits = above.view(b, h, n) if g == 1 else above.sum(dim=(2, 3), dtype=torch.int32)
            column = ring[:, :, :, (q0 + lo) % w]
            count += hits
            count -= column
            column.copy_(hits)
        else:
            hits = above.sum(dim=2, dtype=torch.int32)  # [1, H_kv, c, n]: the columns of those queries
            cols = run.query_pos[lo:] % w
            new = hits.transpose(2, 3)
            count += new.sum(-1, dtype=torch.int32) - ring[:, :, :, cols].sum(-1, dtype=torch.int32)
            ring[:, :, :, cols] = new.to(torch.uint8)

    def counts(self, lc: LayerCache) -> torch.Tensor:
        """Hits per slot over the history window (the ring's row sums, kept as a running count)."""
        return lc.slot("count", 0, torch.int32).float()

    def evict(self, lc: LayerCache, run: Run) -> None:
        m = run.target
        if lc.n <= m:
            return
        count, pos = lc.slot("count", 0, torch.int32), lc.pos
        # ties in the integer counts evict the oldest token, on every device: count · 2^32 + position
        evict_outside_window(
            lc,
            m,
            m - int(m * (1 - self.recent_share)),
            lambda a, b: count[:, :, a:b].long() * 2**32 + pos[:, :, a:b],
            lead=self.global_tokens,
        )

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        self.evict(lc, run)

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        self.evict(lc, run)
