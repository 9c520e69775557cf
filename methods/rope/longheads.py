from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register
from harness.attention import (
    AttentionInputs,
    AttentionMethod,
    attend_lse,
    attention_override,
    chunk_attend,
    merge_stacked,
    rotate,
)
from harness.methods.rope._common import rope_shape

# elements of a block's pair-sized tensor (each far query's output per slot) and of a call's tiles
# (their rotated queries, keys and values): FAR_BUDGET times the call's queries [h, Lq, d], so that
# they scale with the prefill chunk as the model's own activations do (a fixed 2^14 pairs made blocks
# of 32 queries with Llama-3-8B's heads: thousands of small kernel launches per layer on a GPU), or
# 1/CACHE_SHARE of the layer's cached keys if more, so that a decoding step is not cut into calls of
# a tile or two (a fixed floor of 2^22 took the zoo's peak at 8k to 1.4x the baseline's)
FAR_BUDGET, CACHE_SHARE = 4.0, 8
# (query, slot) pairs per tile (a batch entry of a fused call, against one chunk): per block, the
# power of two nearest the mean number of pairs that read a (KV head, chunk), within these bounds
# (64 for every block made many tiles mostly padding with Llama-3's 8k window; 256 took the prefill
# at 16k from 1.59x to 1.36x the baseline's time on a grouped-query model, where a zoo model's
# chunks have few pairs; both measured on the explicit-logits tiles before the fused ones)
TILE_MIN, TILE_MAX = 16, 256
SELECTED = "longheads.selective_queries"  # telemetry: queries that attended through chunk selection


@register
@dataclass
class LongHeads(AttentionMethod, LMMethod):
    """LongHeads — Lu et al. 2024, "LongHeads: Multi-Head Attention is Secretly a Long Context
    Processor" (arXiv:2402.10685); rule from LuLuLuyi/LongHeads `modeling_longheads/modeling_llama.py`.

    The context is cut into chunks of w tokens. A query within the first L tokens (L = the trained
    window, `atten_length`) attends normally. Beyond it, every head picks k = L/w chunks for every
    query on its own: the first chunk, the previous chunk and the query's own chunk always, plus the
    k − 3 other past chunks whose representation scores highest against the head's (un-rotated)
    query. The picked chunks are laid side by side in their original order and rotated at positions
    0 … k·w − 1, the query at (k − 1)·w + (p mod w), so no distance exceeds L − 1.
    A chunk's representation: its tokens attend to each other without a causal mask at positions
    p mod w; the mean of those outputs is a query that attends over the chunk's keys, and the
    keys weighted by that softmax are the representation (official code).

    The official prefill omits the query's own key (its selected keys stop one short), while its
    decoding step includes it; here every query includes itself, the one rule for prefill and
    decoding, so generation with the KV cache equals full recomputation. Raw keys are cached, and
    a chunk's representation is computed per layer as soon as the chunk is complete, so raw queries
    are kept only for the chunk in progress (a chunk completed during decoding needs its queries;
    older ones never again): memory stays that of the KV cache. A grouped-query model's KV heads
    are not repeated: each query head picks its chunks and reads them from its KV head.

    chunk_size: w; None = L/16 (256 for a 4k Llama-2, the official `window_size`).
    atten_length: L; None = the model's original context (4096 for Llama-2, as officially).
    """

    name = "longheads"
    family = "rope"
    paper = "LongHeads: Multi-Head Attention is Secretly a Long Context Processor (arXiv:2402.10685)"
    patches = frozenset({"attention", "kv_cache"})
    ranges = {"chunk_size": "[1, inf)", "atten_length": "[1, inf)"}  # checked by params.build before any model loads
    chunk_size: int | None = field(default=None, metadata={"help": "w; None = 1/16 of the original context"})
    atten_length: int | None = field(default=None, metadata={"help": "attention window L; None = the original context"})

    def __post_init__(self):
        # layer -> (first kept key column c, raw queries of key columns c.. [b, h, Lk - c, d])
        self._queries: dict[int, tuple[int, torch.Tensor]] = {}
        self._reps: dict[tuple[int, int], torch.Tensor] = {}  # (layer, row) -> [h, chunks, d]
        self._counter = None

    def sizes(self, lm) -> tuple[int, int]:
        try:
            original = rope_shape(lm.model.config).original_max
        except ValueError as e:
            raise UserError(f"method longheads: {e}") from None
        L = self.atten_length or original
        w = self.chunk_size or max(1, L // 16)
        if L % w or L // w < 3:
            raise UserError(
                f"longheads: atten_length {L} must be a multiple of chunk_size {w} with at least "
                f"3 chunks (first, previous, current)"
            )
        return w, L // w

    def resolved(self, lm, ctx) -> dict:
        w, k = self.sizes(lm)
        return {"chunk_size": w, "chunks_per_head": k, "atten_length": w * k}

    def apply(self, lm, ctx):
        w, k = self.sizes(lm)
        self._queries.clear()
        self._reps.clear()
        self._counter = lm.telemetry
        return attention_override(lm.model, lambda a: self.attend(a, w, k), counter=lm.telemetry)

    def check_effect(self, lm, ctx, result) -> str | None:
        reason = super().check_effect(lm, ctx, result)
        w, k = self.sizes(lm)
        if reason is None and (ctx.target_length or 0) > w * k and not lm.telemetry[SELECTED]:
            return f"no query went beyond the {w * k}-token window, so no chunk was ever selected"
        return reason

    # -- the rule ------------------------------------------------------------------------------
    def attend(self, a: AttentionInputs, w: int, k: int) -> torch.Tensor:
        fresh = a.q.shape[2] == a.k.shape[2]
        if fresh:
            self._queries[a.layer] = (0, a.q)
            for key in [key for key in self._reps if key[0] == a.layer]:
                del self._reps[key]
        else:
            c, kept = self._queries[a.layer]
            self._queries[a.layer] = (c, torch.cat([kept, a.q], dim=2))
        c, queries = self._queries[a.layer]
        out = torch.zeros_like(a.q)
        lq, lk = a.q.shape[2], a.k.shape[2]
        needed = lk  # the first key column whose query a future chunk representation needs
        q_host, k_host = a.on_host()  # positions decide the split and the chunks: read on the host
        for b in range(a.q.shape[0]):
            # the row's real (non-padding) keys, on the host; None: every key (no padding mask, or none
            # padded), so that a decoding step does no work over the whole context on the host
            valid = None if a.allowed is None else a.mask(lq - 1)[b, 0, 0].cpu()
            if valid is not None and bool(valid.all()):
                valid = None
            if valid is not None and not valid.any():
                continue
            if valid is None:  # (no boolean indexing either: each is a sync on a GPU)
                base = int(k_host[b, 0])
                q_all, K, V, q, rows, dropped = queries[b], a.k[b], a.v[b], a.q[b], slice(None), c
                t, t_dev = q_host[b] - base, a.q_pos[b] - base  # positions relative to the row's first token
            else:  # the row's kept queries, keys and values, without padding; padding queries stay zero
                base = int(k_host[b][valid][0])
                on = valid.to(a.k.device)
                q_all, K, V = queries[b][:, on[c:]], a.k[b][:, on], a.v[b][:, on]
                rows = on[lk - lq :]
                q, t_dev, t = a.q[b][:, rows], a.q_pos[b][rows] - base, q_host[b][valid[lk - lq :]] - base
                dropped = int(valid[:c].sum())  # (how many of its tokens' queries were dropped before)
            if len(t) > 1 and not bool((t[1:] > t[:-1]).all()):
                raise ValueError("longheads: the positions must increase (one token per position)")
            out[b][:, rows] = self._row(a, b, (q_all, dropped), (t_dev, t), q, K, V, w, k)
            have = self._reps[(a.layer, b)].shape[1] * w if (a.layer, b) in self._reps else 0
            if have < (lk if valid is None else int(valid.sum())):  # the have-th real key's query is needed
                needed = min(needed, have if valid is None else int(valid.nonzero()[have, 0]))
        if needed > c:  # queries of chunks already summarised are never read again
            self._queries[a.layer] = (needed, queries[:, :, needed - c :])
        return out

    def _row(self, a, b, q_all, t, q, K, V, w, k):
        """One row's queries q [h, Lq, d] at positions t (on the device, and on the host), over its
        keys and values K, V [h_kv, n, d]: a grouped-query model's KV heads, each read by its query
        heads (h / h_kv)."""
        t, t_host = t
        L = w * k
        out = torch.empty_like(q)
        # every completed chunk is summarised now, so that only the queries of the chunk in progress
        # are kept (lazily, the queries of a whole trained window were, per layer: a second cache)
        reps = self._chunk_reps(a, b, q_all, K, V, w)
        near = int((t_host < L).sum())  # (the positions increase: the first `near` queries)
        if near:  # inside the trained window: plain attention, through the fused kernel
            m = int(t_host[near - 1]) + 1  # these queries see only the first m keys
            kr = rotate(K[None, :, :m], *a.rope(torch.arange(m, device=K.device)[None]))
            qr = rotate(q[:, :near][None], *a.rope(t[None, :near]))
            if int(t_host[0]) == m - near:  # the last `near` keys' own queries
                out[:, :near] = chunk_attend(qr, kr, V[None, :, :m], m - near, a.scaling)[0]
            else:  # (gaps in the positions) every query sees key 0, so no row is empty
                allowed = (torch.arange(m, device=K.device)[None, :] <= t[:near, None])[None, None]
                out[:, :near] = attend_lse(qr, kr, V[None, :, :m], a.scaling, allowed)[0][0]
        if near < len(t_host):
            if self._counter is not None and a.layer == 0:
                self._counter[SELECTED] += len(t_host) - near
            far = (t[near:], t_host[near:])
            out[:, near:] = self._selective(a, q[:, near:], far, K, V, reps, w, k, a.q.shape[2])
        return out

    def _chunk_reps(self, a, b, q_all, K, V, w) -> torch.Tensor:
        """Representations of every complete chunk [h, chunks, d], computed once per chunk; q_all:
        (the row's kept queries, how many of its first tokens' queries were dropped)."""
        q_all, dropped = q_all
        hkv, n, d = K.shape
        h = q_all.shape[0]
        done = self._reps.get((a.layer, b))
        have = 0 if done is None else done.shape[1]
        total = n // w
        if total > have:
            sl = slice(have * w, total * w)
            local = torch.arange(w, device=K.device).repeat(total - have)[None]
            cos, sin = a.rope(local)
            g, c = h // hkv, total - have
            # a (KV head, chunk) per batch entry, its query heads' w tokens as g·w queries: the fused
            # kernel, without a mask (a chunk's w x w logits per query head, in float32, were 134 MB
            # per 2,048-token prefill chunk with Llama-3-8B's heads)
            qc = rotate(q_all[:, sl.start - dropped : sl.stop - dropped][None], cos, sin)[0]
            qc = qc.view(hkv, g, c, w, d).transpose(1, 2).reshape(hkv * c, 1, g * w, d)
            kc = rotate(K[:, sl][None], cos, sin)[0].reshape(hkv * c, 1, w, d)
            inner = F.scaled_dot_product_attention(qc, kc, V[:, sl].reshape(hkv * c, 1, w, -1), scale=d**-0.5)
            summary = inner.reshape(hkv * c, g, w, -1).mean(-2, keepdim=True)  # [h_kv · chunks, g, 1, d]
            weights = torch.softmax((summary @ kc.transpose(-1, -2)).float() * d**-0.5, -1).to(kc.dtype)
            new = (weights @ kc).view(hkv, c, g, d).transpose(1, 2).reshape(h, c, d)
            done = new if done is None else torch.cat([done, new], dim=1)
            self._reps[(a.layer, b)] = done
        return done

    @staticmethod
    def _selective(a, q, t, K, V, reps, w, k, lq):
        """Attention of far queries over their k picked chunks, on the fused kernel, without
        gathering k·w keys per query.

        RoPE depends only on the query-key distance, so the key at slot s, offset o (position
        s·w + o) against the query at q_at gives the logit of the key rotated at o against the query
        rotated at q_at − s·w: keys rotate once, at their in-chunk offsets, and each query rotates
        once per slot. A query's k slots are k partial attentions over disjoint keys, merged exactly
        by their log-sum-exp (merge_stacked). The k − 1 slots before its own chunk see all w keys:
        those (query, slot) pairs are grouped by the (KV head, chunk) they read, in tiles (of a size
        per block: _tile_rows), and a batch of tiles is one fused call (attend_lse) against each
        tile's chunk, gathered and rotated at offsets 0 … w − 1 when the batch is made: no rotated
        copy of the layer's keys and no logits are ever held. The own chunk is seen causally: its
        queries attend to it apart (_own_chunk). The data moved per query is its k rotated copies and
        outputs, 2·k·d numbers, plus its share of the tiles' chunks, not 2·k·w·d of gathered keys and
        values.

        Memory: a block of far queries holds its pairs' rotated queries and their outputs, each at
        most `budget` elements (FAR_BUDGET times the call's queries, so that they scale with the
        prefill chunk as the model's own activations do), and a call its tiles' queries, rotated
        keys and values, as many. Memory stays that of the KV cache plus one block's pairs. (Keys
        rotated once per block, not per call, were a rotated copy of the layer's keys: the zoo's
        peak at 8k went from 0.96x to 1.19x the baseline's.)"""
        (h, nq, d), (hkv, n, _), (t, t_host) = q.shape, K.shape, t
        budget = max(int(FAR_BUDGET * lq * h * d), n * hkv * d // CACHE_SHARE)
        chunks = n // w  # the complete ones: the only ones a tile reads (a query's own attends apart)
        cos_t, sin_t = a.rope(torch.arange(k * w, device=K.device)[None])  # every position in the window
        cos_o, sin_o = cos_t[:, :w], sin_t[:, :w]

        def by_chunk(x):  # [h_kv, chunks, w, d], a view: a whole chunk is one index (not w of them)
            return x[:, : chunks * w].unflatten(1, (chunks, w))

        g = torch.arange(reps.shape[1], device=K.device)
        # pairs group by the (KV head, chunk) whose keys they read, so a KV head's query heads share
        # its chunks' tiles (per query head, each of them padded its own)
        head_base = (torch.arange(h, device=K.device) // (h // hkv) * chunks)[:, None, None]
        block = max(1, budget // (h * (k - 1) * d))
        outs = []
        for s in range(0, nq, block):
            qb, tb, tb_host = q[:, s : s + block], t[s : s + block], t_host[s : s + block]
            B, cur, off = tb.shape[0], tb // w, tb % w
            score = torch.einsum("hqd,hgd->hqg", qb, reps)
            candidate = (g[None, :] >= 1) & (g[None, :] <= cur[:, None] - 2)
            top = score.masked_fill(~candidate[None], float("-inf")).topk(k - 3, dim=-1).indices
            ends = torch.stack([torch.zeros_like(cur), cur - 1], -1)[None].expand(h, -1, -1)
            # in chunk order: the first chunk, the picked ones (all between), the previous one
            picked = torch.cat([ends[..., :1], top.sort(-1).values, ends[..., 1:]], -1)  # [h, B, k - 1]
            # pair i = (query head · B + query) · (k − 1) + slot; its output goes to row i + i // (k − 1)
            # of out (every k-th row, a query's own-chunk slot, is _own_chunk's)
            layout = _tile_layout((picked + head_base).reshape(-1), hkv * chunks, budget // d, w, k)
            source, tiles = layout[0], layout[-1]
            head, chunk = tiles // chunks, tiles % chunks  # the tiles' chunks (all complete)
            # a (query, slot) pair's position in the window, the same for every head: [B · (k − 1)]
            at = ((k - 1 - torch.arange(k - 1, device=K.device)) * w + off[:, None]).reshape(-1)
            # every pair's rotated query, in pair order [h · B · (k − 1), d], rotated once per block:
            # rotating a call's padded rows as it gathered them took eight launches per call on a
            # GPU, and the zoo's prefill at 8k to about 1.38x the baseline's time, against about
            # 1.23x (medians of a three-round A/B: docs/benchmarks.md, item 8)
            pairs = qb[:, :, None].expand(h, B, k - 1, d).reshape(1, h, B * (k - 1), d)
            pairs = rotate(pairs, cos_t[:, at], sin_t[:, at]).view(-1, d)

            def queries(r0, r1):  # padded rows r0 … r1 − 1: their pairs' rotated queries
                return pairs[source[r0:r1]]

            def keys(t0, t1):  # each tile's chunk, rotated at offsets 0 ... w - 1: [tiles, 1, w, d]
                return rotate(by_chunk(K)[head[t0:t1], chunk[t0:t1]][:, None], cos_o, sin_o)

            def values(t0, t1):
                return by_chunk(V)[head[t0:t1], chunk[t0:t1]][:, None]

            # [.., slot, :]: the k partial attentions, and a spare last row that padding rows write to
            out_rows = V.new_empty(h * B * k + 1, V.shape[-1])
            lse_rows = torch.empty(h * B * k + 1, device=V.device)
            _tiled_attend(queries, keys, values, layout, a.scaling, out_rows, lse_rows)
            out, lse = out_rows[:-1].view(h, B, k, -1), lse_rows[:-1].view(h, B, k)
            out[:, :, -1], lse[:, :, -1] = _own_chunk(a, qb, (tb, tb_host), K, V, w, cos_o, sin_o)
            outs.append(merge_stacked(out, lse))
        return torch.cat(outs, dim=1)


def _own_chunk(a, q, t, K, V, w, cos_o, sin_o):
    """The last slot: each query [h, B, d] (positions t, increasing) over its own chunk's keys up to
    itself; query and keys rotate at their offsets in the chunk (their distance is that of slot
    k − 1 against the query at (k − 1)·w + offset); one fused call per chunk the block spans.
    Returns the output [h, B, d] and log-sum-exp [h, B]."""
    t, t_host = t  # (on the device, and on the host: the calls' bounds)
    off = t % w
    outs, lses, i0 = [], [], 0
    for c, count in zip(*(x.tolist() for x in torch.unique_consecutive(t_host // w, return_counts=True))):
        o = off[i0 : i0 + count]
        m = int(t_host[i0 + count - 1]) % w + 1  # the chunk's keys up to its last query
        qr = rotate(q[None, :, i0 : i0 + count], cos_o[:, o], sin_o[:, o])
        kc = rotate(K[None, :, c * w : c * w + m], cos_o[:, :m], sin_o[:, :m])
        causal = (torch.arange(m, device=K.device)[None, :] <= o[:, None])[None, None]
        out, lse = attend_lse(qr, kc, V[None, :, c * w : c * w + m], a.scaling, causal)
        outs.append(out[0])
        lses.append(lse[0])
        i0 += count
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def _tiled_attend(queries, keys, values, layout, scaling: float, out, lse) -> None:
    """Fused attention of every (query, slot) pair over its tile's keys and values, `per` tiles per
    call, so that only those tiles' padded rows, keys and values exist at a time: queries(r0, r1)
    gives padded rows r0 … r1 − 1's rotated queries [r1 − r0, d], keys(t0, t1) and values(t0, t1)
    [t1 − t0, 1, w, d] for tiles t0 … t1 − 1. Each padded row's output and log-sum-exp go to its row
    of out [n_rows, d_v] and lse [n_rows] (a padding row's to the spare last one). Only the call's
    tiles are gathered at a time, and the host reads nothing. layout: _tile_layout's."""
    _, dest, n_tiles, tile, per, _ = layout
    for t0 in range(0, n_tiles, per):
        t1 = min(t0 + per, n_tiles)
        r0, r1 = t0 * tile, t1 * tile
        o, l = attend_lse(queries(r0, r1).view(t1 - t0, 1, tile, -1), keys(t0, t1), values(t0, t1), scaling, None)
        out.index_copy_(0, dest[r0:r1], o.reshape(-1, o.shape[-1]))
        lse.index_copy_(0, dest[r0:r1], l.reshape(-1).float())


def _tile_layout(group: torch.Tensor, n_groups: int, rows_budget: int, w: int, k: int) -> tuple:
    """_tiled_attend's layout of pairs laid out by group (_tile_rows): the pair each padded row
    copies (a padding row: pair 0) and the row of out it writes (a pair's, i + i // (k − 1); a
    padding row's, the spare last one), the number of tiles, the tile size, the tiles per call (a
    tile holds its padded rows and its chunk's w keys and w values: as many as rows_budget rows
    allow) and every tile's group."""
    tile, order, rows, tiles = _tile_rows(group, n_groups)
    n = tiles.shape[0] * tile
    source = torch.zeros(n, dtype=torch.long, device=group.device)
    source[rows] = order
    dest = torch.full((n,), group.shape[0] // (k - 1) * k, dtype=torch.long, device=group.device)
    dest[rows] = order + order // (k - 1)
    return source, dest, tiles.shape[0], tile, max(1, rows_budget // (tile + 2 * w)), tiles


def _tile_rows(group: torch.Tensor, n_groups: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay items out by group, each group padded to whole tiles: returns the tile size (the power of
    two nearest the mean count of the groups used, within TILE_MIN … TILE_MAX), the items in layout
    order, their rows in that layout (increasing) and every tile's group [n_tiles]. The groups'
    counts are the one value read from the device: the sizes are reckoned on the host (a GPU's
    queue drains at each read)."""
    dev = group.device
    order = group.argsort()
    counts = torch.bincount(group, minlength=n_groups).cpu()
    mean = group.shape[0] / max(1, int((counts > 0).sum()))
    tile = int(min(TILE_MAX, max(TILE_MIN, 2 ** round(math.log2(max(mean, 1.0))))))
    tiles_per = (counts + tile - 1) // tile
    tile_start = (torch.cumsum(tiles_per, 0) - tiles_per) * tile  # each group's first row
    item_start = torch.cumsum(counts, 0) - counts  # its first item in sorted order
    gs = group[order]
    rows = tile_start.to(dev)[gs] + torch.arange(group.shape[0], device=dev) - item_start.to(dev)[gs]
    return tile, order, rows, torch.repeat_interleave(torch.arange(n_groups), tiles_per).to(dev)
