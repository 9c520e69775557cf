from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.attention import rotate
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._rerotation import rerotate, rerotation_angles
from harness.methods.kv._run import Run


@register
@dataclass
class StreamingLLM(KVMethod):
    """StreamingLLM — Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"
    (arXiv:2309.17453); rule from mit-han-lab/streaming-llm `kv_cache.py` and `pos_shift/`.

    Keeps the first `n_sink` tokens (attention sinks, 4 in the official code) and the most recent
    budget − n_sink tokens; everything between is dropped, at prefill and again at every decoding
    step (the official `evict_for_space`; here the new token is appended, attends, then the
    oldest non-sink token goes). Positions are cache-relative, as in `pos_shift`: kept keys sit at
    positions 0..n−1 and new tokens are fed at the cache length.

    At prefill the kept window is re-rotated exactly to its cache positions (kvpress
    KeyRerotationPress: k cos δθ + rot(k) sin δθ). While decoding, every evicted token moves the
    whole window down one position; instead of re-rotating the window each step (O(window), what
    `pos_shift` does), the layer counts the shift D the window's keys still owe and the fed tokens'
    RoPE is advanced by D (`rope_shift`): the query and the new key meet the window at the same
    relative offsets, and the sinks, whose positions do not move, are re-rotated from their own
    keys to +D (n_sink keys per step). Attention depends only on those offsets
    (RoPE(a)·RoPE(b) = RoPE(b − a)), so the scores equal pos_shift's; the newest key takes the
    evicted token's slot (a ring: slot order no longer follows positions, which `pos` carries).
    Compresses: prefill and decoding. No attention weights needed. budget: kept tokens (fraction
    of the context or a count)."""

    name = "streaming_llm"
    paper = "Efficient Streaming Language Models with Attention Sinks (arXiv:2309.17453)"
    compresses = "both"
    positions = "cache"
    all_layers = True
    ranges = {"n_sink": "[0, inf)"}  # checked by params.build before any model loads
    n_sink: int = field(default=4, metadata={"help": "attention-sink tokens kept at the start (official: 4)"})

    def __post_init__(self):
        super().__post_init__()
        if self.n_sink < 0:
            raise ValueError("n_sink must be >= 0")

    def rope_shift(self, run: Run) -> int:
        return run.all_layers().state.get("shift", 0) if run.layers else 0

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        self.evict(lc, run.target, run)

    def evict(self, lc: LayerCache, m: int, run: Run) -> None:
        """Prefill: keep the sinks and the newest m − n_sink tokens, re-rotated to 0..m−1."""
        n = lc.n
        if n <= m:
            return
        s = min(self.n_sink, m)
        dev = lc.k.device
        idx = torch.cat([torch.arange(s, device=dev), torch.arange(n - (m - s), n, device=dev)])
        # slot i holds a key rotated at cache position i; after keeping, slot j must be at j
        delta = (torch.arange(m, device=dev) - idx).expand(*lc.k.shape[:2], m)
        lc.keep(idx.expand(*lc.k.shape[:2], m))
        lc.replace(k=rerotate(lc.k, delta, run.inv_freq))

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        """Back to the budget's m slots; the window's owed shift D grows by the tokens evicted."""
        n, m = lc.n, run.target
        if n <= m:
            return
        s, st = min(self.n_sink, m), lc.state
        if "sinks" not in st:  # the sinks' keys at their positions 0..s-1 (shift 0)
            st["sinks"], st["shift"], st["ring"] = lc.k[:, :, :s].clone(), 0, 0
        if n == m + 1 and s < m:  # one token over: the newest takes the oldest window slot
            lc.drop_one(s + st["ring"])
            st["ring"] = (st["ring"] + 1) % (m - s)
        else:  # a fed chunk: keep the sinks and the newest m - s, oldest first
            window = lc.pos[:, :, s:].argsort(dim=-1)[:, :, n - m :] + s
            sinks = torch.arange(s, device=lc.k.device).expand(*window.shape[:2], s)
            lc.keep(torch.cat([sinks, window], dim=-1))
            st["ring"] = 0
        st["shift"] += n - m
        if s:
            key = ("streaming_llm.shift", st["shift"])
            if key not in run.memo:  # the same angles for every layer
                run.memo = {
                    key: tuple(t.to(lc.k.device) for t in rerotation_angles(st["shift"], run.inv_freq, lc.k.dtype))
                }
            lc._k[:, :, :s] = rotate(st["sinks"], *run.memo[key])
