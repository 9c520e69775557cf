from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._run import Run


def merge_probability(evicted_score: torch.Tensor, recent_mean: torch.Tensor) -> torch.Tensor:
    """CaM's p = A[evicted] / mean(A over the recent window), clamped to [0, 1] (per head)."""
    return (evicted_score / recent_mean.clamp(min=1e-12)).clamp(0.0, 1.0)


@register
@dataclass
class CaM(KVMethod):
    """CaM — Zhang et al. 2024, "CaM: Cache Merging for Memory-efficient LLMs Inference" (ICML
    2024; published without an arXiv id); rule from
    zyxxmu/cam `modify_llama_cam.py`, defaults start_ratio = recent_ratio = 0.1 of the prompt,
    merge_budget 32.

    Eviction base: the first tokens (half the budget, start_ratio) and the most recent (the other
    half). A token leaving the recent window is merged instead of lost: with probability
    p = A[evicted]/mean(A over the rest of the recent window), clamped to [0, 1], where A is
    (`merge_attention`) "current": the attention each token receives from the newest query (the
    current decoding step; at prefill the last prompt token), as zyxxmu/cam's Llama decoding code
    (`local_cam_mask`) reads it, or "cumulative": the attention accumulated over every query so far
    (kvpress `CAMPress`); summed over a KV head's query heads (the ratio is scale-free),
    M ~ Bernoulli(p), and M·v_evicted/merge_budget is added to the *values* of the next
    merge_budget tokens (keys unchanged). While decoding one token leaves per step (exact; the
    recent window is a ring of slots, every layer at once). At
    prefill all middle tokens leave at once; each adds its share to the values of the
    merge_budget tokens after it, from its own original value (one pass, without the
    evicted-to-evicted chains of a token-by-token stream) [our simplification]. Seeded draws.
    Compresses: prefill and every decoding step."""

    name = "cam"
    paper = "CaM: Cache Merging for Memory-efficient LLMs Inference (ICML 2024)"
    compresses = "both"
    accumulates = True
    all_layers = True
    ranges = {"start_share": "[0, 1]", "merge_budget": "[0, inf)"}  # checked by params.build before any model loads
    budget: float = field(
        default=0.2, metadata={"help": "kept tokens (official: start 0.1 + recent 0.1 of the prompt)"}
    )
    start_share: float = field(default=0.5, metadata={"help": "share of the budget kept at the start"})
    merge_budget: int = field(default=32, metadata={"help": "next tokens whose values receive a merged value"})
    merge_attention: str = field(
        default="current",
        metadata={
            "help": "A in the merge probability: current (the newest query's attention, zyxxmu/cam) "
            "or cumulative (accumulated attention, kvpress CAMPress)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.start_share <= 1 or self.merge_budget < 1:
            raise ValueError("start_share in [0, 1], merge_budget >= 1")
        if self.merge_attention not in ("current", "cumulative"):
            raise ValueError("merge_attention must be current or cumulative")

    def observe(self, lc: LayerCache, probs: torch.Tensor, logits: torch.Tensor, run: Run) -> None:
        """cumulative: add the chunk's column sums; current: the score becomes the newest query's
        attention [1, H_kv, n] (the chunk's last query, summed over the KV head's query heads)."""
        if self.merge_attention == "cumulative":
            return super().observe(lc, probs, logits, run)
        last = probs[:, :, :, -1].sum(dim=2)
        if lc.score is None:
            lc.add_score(last)
        else:
            lc.score.copy_(last)

    def split(self, m: int) -> tuple[int, int]:
        start = int(m * self.start_share)
        return start, m - start

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        n, m = lc.n, run.target
        if n <= m:
            return
        start, rec = self.split(m)
        score, v = lc.score, lc.v.clone()
        draw = self.draw(score[:, :, start : n - rec], score[:, :, n - rec :].mean(-1, keepdim=True), run)  # [1, H, E]
        contrib = v[:, :, start : n - rec] * (draw / self.merge_budget).unsqueeze(-1)  # [1, H, E, d]
        # token t (evicted) adds to t+1 .. t+merge_budget: a windowed sum of the contributions
        padded = torch.nn.functional.pad(contrib.cumsum(2), (0, 0, 1, 0))  # prefix sums
        idx = torch.arange(start, n, device=v.device) - start  # receivers, in evicted coords
        hi = idx.clamp(max=contrib.shape[2])
        lo = (idx - self.merge_budget).clamp(min=0, max=contrib.shape[2])
        v[:, :, start:] += padded[:, :, hi] - padded[:, :, lo]
        lc.replace(v=v)
        keep = torch.cat([torch.arange(start), torch.arange(n - rec, n)]).to(v.device)
        lc.keep(keep.expand(*v.shape[:2], m))
        if rec >= 1:
            lc.state["ring"] = 0  # in position order: the recent window's ring starts at `start`

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        """One token leaves the recent window per decoded token. The window keeps its slots as a
        ring (state["ring"]: the slot of its oldest token) so that nothing shifts: the leaving
        token's share goes to the next merge_budget tokens in position order (the ring after it,
        wrapping, then the newest token), and the newest takes its slot. A fed chunk, or a cache
        not yet in that layout, is put in position order and evicted one token at a time."""
        m = run.target
        start, rec = self.split(m)
        if lc.n <= m:
            return
        st = lc.state
        if lc.n == m + 1 and rec >= 1 and "ring" in st:
            n, r = lc.n, start + st["ring"]
            score, v = lc.score, lc.v
            rest = (score[:, :, start:].sum(-1, keepdim=True) - score[:, :, r : r + 1]) / max(1, n - start - 1)
            share = v[:, :, r : r + 1] * (self.draw(score[:, :, r : r + 1], rest, run) / self.merge_budget).unsqueeze(
                -1
            )
            left = self.merge_budget
            for a, b in ((r + 1, start + rec), (start, r), (n - 1, n)):  # position order after r
                b = min(b, a + left)
                if b > a:
                    v[:, :, a:b] += share
                    left -= b - a
            lc.move(r, n - 1)
            lc.n = m
            st["ring"] = (st["ring"] + 1) % rec
            return
        lc.keep(lc.pos.argsort(dim=-1))
        e = start  # the oldest token of the recent window leaves
        while lc.n > m:  # one at a time
            score, v = lc.score, lc.v  # v: a view of the cache (merged in place)
            draw = self.draw(score[:, :, e : e + 1], score[:, :, e + 1 :].mean(-1, keepdim=True), run)
            v[:, :, e + 1 : e + 1 + self.merge_budget] += v[:, :, e : e + 1] * (draw / self.merge_budget).unsqueeze(-1)
            lc.shift_out(e)
        if rec >= 1:
            st["ring"] = 0

    @staticmethod
    def draw(evicted_score, recent_mean, run: Run) -> torch.Tensor:
        """M ~ Bernoulli(p), seeded by the run's generator (on the CPU, then to the cache's device)."""
        p = merge_probability(evicted_score, recent_mean)
        return torch.bernoulli(p.cpu(), generator=run.generator).to(p.device)
