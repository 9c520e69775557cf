"""Shared eviction arithmetic of the kv methods: the budget in kept tokens, per-KV-head score sums,
keeping the top-scoring slots, the recent window, H2O's recent + heavy split with its in-place
ring for decoding, and the attention of SnapKV-style observation windows."""

from __future__ import annotations

import torch
from harness.methods.kv._cache import LayerCache


def kept_target(budget: float, n: int) -> int:
    """Tokens kept of n under a budget (fraction <= 1 or count > 1); at least 1."""
    k = round(budget * n) if budget <= 1 else int(budget)
    return max(1, min(n, k))


def group_sum(x: torch.Tensor) -> torch.Tensor:
    """[b, H_kv, g, c, n] -> [b, H_kv, n]: summed over a KV head's query heads and the queries
    (a view when there is one of each: a decoding step without grouped heads)."""
    b, h, g, c, n = x.shape
    return x.view(b, h, n) if g * c == 1 and x.is_contiguous() else x.sum(dim=(2, 3))


def keep_top(lc: LayerCache, scores: torch.Tensor, m: int, in_order: bool = False) -> None:
    """Keep the m highest-scoring slots of each head, in position order; one token over budget
    (decoding) evicts each head's lowest by a move instead, unless `in_order`. Ties go as
    torch.topk breaks them (as in kvpress, whose presses this matches on the CPU): the device's
    kernel decides, so CPU and GPU can keep different tokens among equal scores (SnapKV's pooled
    plateaus)."""
    m = min(m, lc.n)
    if m >= lc.n:
        return
    if m == lc.n - 1 and not in_order:  # a few copies instead of a top-k and a gather
        lc.drop_one(scores.argmin(dim=-1))
        return
    idx = scores.topk(m, dim=-1, sorted=False).indices
    lc.keep(idx.gather(-1, lc.pos.gather(-1, idx).argsort(dim=-1)))


def recent(lc: LayerCache, window: int) -> torch.Tensor:
    """Bool [1, H_kv, n]: the slot holds one of the `window` newest tokens of its head."""
    if window <= 0:
        return torch.zeros_like(lc.pos, dtype=torch.bool)
    newest = lc.pos.max(dim=-1, keepdim=True).values
    return lc.pos > newest - window


def evict_outside_window(lc: LayerCache, m: int, window: int, score, lead: int = 0) -> None:
    """Keep m slots per head: the `window` newest tokens, the first `lead` tokens of the sequence
    and the highest-scoring rest (H2O's recent + heavy split; Keyformer, VATP, Scissorhands).
    score(a, b): the eviction score of slots a..b-1, [1, H_kv, b - a] (higher: kept).

    The general case (prefill, a fed chunk) masks the protected tokens and keeps the top m in
    position order, so the leading tokens fill the first slots and the recent window the last
    `window`. From there each decoded token is one over budget, and the only new candidate is the
    token leaving the window: the window stays a ring in its slots (state["ring"]: the slot of
    its oldest token) and the eviction is one min over the slots between the leading tokens and
    the ring, compared with the leaving token, instead of a scan of every slot's position, a mask
    and an argmin (the same choice; ties go to the heavy slot). The evicted slot receives the
    leaving token if it stays, and the ring slot the newest token."""
    n, heavy, st = lc.n, m - window, lc.state
    if n <= m:
        return
    if n == m + 1 and "ring" in st:
        r = heavy + st["ring"]
        if heavy > lead:
            low, j = score(lead, heavy).min(dim=-1)
            lc.move(torch.where(score(r, r + 1)[:, :, 0] < low, r, j + lead), r)
        lc.move(r, n - 1)
        lc.n = m
        st["ring"] = (st["ring"] + 1) % window
        return
    s = score(0, n)
    top = torch.iinfo(s.dtype).max if not s.is_floating_point() else float("inf")
    protect = recent(lc, window) | (lc.pos < lead) if lead else recent(lc, window)
    keep_top(lc, s.masked_fill(protect, top), m, in_order=True)
    pos = lc.pos  # the ring holds when the last `window` slots are the window, the first `lead` the lead
    if (
        window > 0
        and heavy >= lead
        and bool(recent(lc, window)[:, :, heavy:].all())
        and bool((pos[:, :, :lead] < lead).all())
    ):
        st["ring"] = 0
    else:
        st.pop("ring", None)


def window_attention(queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """Probabilities of the last w queries [b, H, w, d] over all n keys [b, H_kv, n, d], causal
    inside the window (query i of the window sees keys up to n - w + i): [b, H_kv, g, w, n]."""
    b, h, w, d = queries.shape
    hkv, n = keys.shape[1], keys.shape[2]
    q = queries.view(b, hkv, h // hkv, w, d)
    logits = (q @ keys[:, :, None].transpose(-1, -2)) * scaling
    allowed = torch.arange(n, device=keys.device)[None, :] <= torch.arange(n - w, n, device=keys.device)[:, None]
    return torch.softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
