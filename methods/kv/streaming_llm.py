from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.kv._common import KVMethod, LayerCache, Run, rerotate, rerotation_angles, rotate


@register
@dataclass
class StreamingLLM(KVMethod):
    """StreamingLLM — Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"
    (arXiv:2309.17453); rule from mit-han-lab/streaming-llm `kv_cache.py` and `pos_shift/`.

    Keeps the first `n_sink` tokens (attention sinks, 4 in the official code) and the most recent
    budget − n_sink tokens; everything between is dropped, at prefill and again at every decoding
    step (the official `evict_for_space`; here the new token is appended, attends, then the
    oldest non-sink token goes). Positions are cache-relative, as in `pos_shift`: kept keys are
    re-rotated exactly to positions 0..n−1 (kvpress KeyRerotationPress: k cos δθ + rot(k) sin δθ)
    and new tokens are fed at the cache length. Compresses: prefill and decoding. No attention
    weights needed. budget: kept tokens (fraction of the context or a count)."""
    name = "streaming_llm"
    paper = "Efficient Streaming Language Models with Attention Sinks (arXiv:2309.17453)"
    compresses = "both"
    positions = "cache"
    n_sink: int = field(default=4, metadata={"help": "attention-sink tokens kept at the start (official: 4)"})

    def __post_init__(self):
        super().__post_init__()
        if self.n_sink < 0:
            raise ValueError("n_sink must be >= 0")

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        self.evict(lc, run.target, run)

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        self.evict(lc, run.target, run)

    def evict(self, lc: LayerCache, m: int, run: Run) -> None:
        n = lc.n
        if n <= m:
            return
        s = min(self.n_sink, m)
        dev = lc.k.device
        if n == m + 1 and s < m:   # decoding: the oldest non-sink leaves, the window moves down one position
            lc.shift_out(s)
            if "back_one" not in lc.state:
                lc.state["back_one"] = rerotation_angles(torch.tensor(-1.0), run.inv_freq, lc.k.dtype)
            cos, sin = lc.state["back_one"]
            lc._k[:, :, s:m] = rotate(lc._k[:, :, s:m], cos, sin)
            return
        idx = torch.cat([torch.arange(s, device=dev), torch.arange(n - (m - s), n, device=dev)])
        # slot i holds a key rotated at cache position i; after keeping, slot j must be at j
        delta = (torch.arange(m, device=dev) - idx).expand(*lc.k.shape[:2], m)
        lc.keep(idx.expand(*lc.k.shape[:2], m))
        lc.replace(k=rerotate(lc.k, delta, run.inv_freq))
