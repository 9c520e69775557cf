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
        needed = a.k.shape[2]  # the first key column whose query a future chunk representation needs
        for b in range(a.q.shape[0]):
            valid = a.mask(a.q.shape[2] - 1)[b, 0, 0]  # the row's real (non-padding) keys
            if not valid.any():
                continue
            base = a.k_pos[b][valid][0]
            t_q = a.q_pos[b] - base  # positions relative to the row's first token
            live = valid[a.k.shape[2] - a.q.shape[2] :]  # the queries' own tokens; padding ones stay zero
            # the row's kept queries (without padding) and how many of its tokens were dropped before
            q_all = queries[b] if bool(valid.all()) else queries[b][:, valid[c:]]
            dropped = int(valid[:c].sum())
            out[b][:, live] = self._row(a, b, valid, (q_all, dropped), t_q[live], a.q[b][:, live], w, k)
            have = self._reps[(a.layer, b)].shape[1] * w if (a.layer, b) in self._reps else 0
            columns = valid.nonzero()[:, 0]
            needed = min(needed, int(columns[have]) if have < len(columns) else a.k.shape[2])
        if needed > c:  # queries of chunks already summarised are never read again
            self._queries[a.layer] = (needed, queries[:, :, needed - c :])
        return out

    def _row(self, a, b, valid, q_all, t, q, w, k):
        # [h_kv, n, d]: a grouped-query model's KV heads, each read by its query heads (h / h_kv)
        K, V = (a.k[b], a.v[b]) if bool(valid.all()) else (a.k[b][:, valid], a.v[b][:, valid])
        L = w * k
        out = torch.empty_like(q)
        # every completed chunk is summarised now, so that only the queries of the chunk in progress
        # are kept (lazily, the queries of a whole trained window were, per layer: a second cache)
        reps = self._chunk_reps(a, b, q_all, K, V, w)
        near = t < L
        if near.any():  # inside the trained window: plain attention, through the fused kernel
            tn = t[near]
            m = int(tn.max()) + 1  # these queries see only the first m keys
            kr = rotate(K[None, :, :m], *a.rope(torch.arange(m, device=K.device)[None]))
            qr = rotate(q[:, near][None], *a.rope(tn[None]))
            if int(tn[0]) == m - len(tn):  # the last len(tn) keys' own queries (positions are increasing)
                out[:, near] = chunk_attend(qr, kr, V[None, :, :m], m - len(tn), a.scaling)[0]
            else:  # (gaps in the positions) every query sees key 0, so no row is empty
                allowed = (torch.arange(m, device=K.device)[None, :] <= tn[:, None])[None, None]
                out[:, near] = attend_lse(qr, kr, V[None, :, :m], a.scaling, allowed)[0][0]
        far = ~near
        if far.any():
            if self._counter is not None and a.layer == 0:
                self._counter[SELECTED] += int(far.sum())
            out[:, far] = self._selective(a, q[:, far], t[far], K, V, reps, w, k, a.q.shape[2])
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

        Memory: a block of far queries holds its pairs' outputs, at most `budget` elements
        (FAR_BUDGET times the call's queries, so that they scale with the prefill chunk as the
        model's own activations do), and a call its tiles' rotated queries, keys and values, as
        many: a query is rotated for a slot only in the call that reads it. Memory stays that of
        the KV cache plus one block's outputs."""
        (h, nq, d), (hkv, n, _) = q.shape, K.shape
        if nq > 1 and not bool((t[1:] > t[:-1]).all()):
            raise ValueError("longheads: the far queries' positions must increase (one token per position)")
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
            qb, tb = q[:, s : s + block], t[s : s + block]
            B, cur, off = tb.shape[0], tb // w, tb % w
            score = torch.einsum("hqd,hgd->hqg", qb, reps)
            candidate = (g[None, :] >= 1) & (g[None, :] <= cur[:, None] - 2)
            top = score.masked_fill(~candidate[None], float("-inf")).topk(k - 3, dim=-1).indices
            ends = torch.stack([torch.zeros_like(cur), cur - 1], -1)[None].expand(h, -1, -1)
            # in chunk order: the first chunk, the picked ones (all between), the previous one
            picked = torch.cat([ends[..., :1], top.sort(-1).values, ends[..., 1:]], -1)  # [h, B, k - 1]
            layout, tiles = _tile_layout((picked + head_base).reshape(-1), hkv * chunks, budget // d, w)
            head, chunk = tiles // chunks, tiles % chunks  # the tiles' chunks (all complete)
            qflat = qb.reshape(h * B, d)
            # a (query, slot) pair's position in the window, the same for every head: [B · (k − 1)]
            at = ((k - 1 - torch.arange(k - 1, device=K.device)) * w + off[:, None]).reshape(-1)

            def queries(pairs):  # pairs i = (query head · B + query) · (k − 1) + slot: rotated queries
                p = at[pairs % at.shape[0]]
                return rotate(qflat[pairs // (k - 1)][None, None], cos_t[:, p], sin_t[:, p])[0, 0]

            def keys(t0, t1):  # each tile's chunk, rotated at offsets 0 ... w - 1: [tiles, 1, w, d]
                return rotate(by_chunk(K)[head[t0:t1], chunk[t0:t1]][:, None], cos_o, sin_o)

            def values(t0, t1):
                return by_chunk(V)[head[t0:t1], chunk[t0:t1]][:, None]

            out = V.new_empty(h, B, k, V.shape[-1])  # [.., slot, :]: the k partial attentions
            lse = torch.empty(h, B, k, device=V.device)
            _tiled_attend(queries, keys, values, layout, a.scaling, out.view(-1, out.shape[-1]), lse.view(-1), k)
            out[:, :, -1], lse[:, :, -1] = _own_chunk(a, qb, tb, K, V, w, cos_o, sin_o)
            outs.append(merge_stacked(out, lse))
        return torch.cat(outs, dim=1)


def _own_chunk(a, q, t, K, V, w, cos_o, sin_o):
    """The last slot: each query [h, B, d] (positions t, increasing) over its own chunk's keys up to
    itself; query and keys rotate at their offsets in the chunk (their distance is that of slot
    k − 1 against the query at (k − 1)·w + offset); one fused call per chunk the block spans.
    Returns the output [h, B, d] and log-sum-exp [h, B]."""
    cur, off = t // w, t % w
    outs, lses, i0 = [], [], 0
    for c, count in zip(*(x.tolist() for x in torch.unique_consecutive(cur, return_counts=True))):
        o = off[i0 : i0 + count]
        m = int(o[-1]) + 1  # the chunk's keys up to its last query
        qr = rotate(q[None, :, i0 : i0 + count], cos_o[:, o], sin_o[:, o])
        kc = rotate(K[None, :, c * w : c * w + m], cos_o[:, :m], sin_o[:, :m])
        causal = (torch.arange(m, device=K.device)[None, :] <= o[:, None])[None, None]
        out, lse = attend_lse(qr, kc, V[None, :, c * w : c * w + m], a.scaling, causal)
        outs.append(out[0])
        lses.append(lse[0])
        i0 += count
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def _tiled_attend(queries, keys, values, layout, scaling: float, out, lse, k: int) -> None:
    """Fused attention of every (query, slot) pair over its tile's keys and values, `per` tiles per
    call, so that only those tiles' padded rows, keys and values exist at a time: queries(pairs)
    gives the pairs' rotated queries [n, d], keys(t0, t1) and values(t0, t1) [t1 − t0, 1, w, d] for
    tiles t0 … t1 − 1. Pair i's output and log-sum-exp go to row i + i // (k − 1) of out [n_rows,
    d_v] and lse [n_rows]: every k-th row, a query's own-chunk slot, is left to the caller. No
    rotated query exists beyond the call's rows. layout: _tile_layout's."""
    source, order, sorted_rows, n_tiles, tile, per, starts = layout
    for t0, p0, p1 in zip(range(0, n_tiles, per), starts, starts[1:]):
        t1 = min(t0 + per, n_tiles)
        padded = queries(source[t0 * tile : t1 * tile])  # (a padding row's output is dropped)
        o, l = attend_lse(padded.view(t1 - t0, 1, tile, -1), keys(t0, t1), values(t0, t1), scaling, None)
        local = sorted_rows[p0:p1] - t0 * tile  # these tiles' pairs, in tile order: their rows here
        dest = order[p0:p1] + order[p0:p1] // (k - 1)
        out.index_copy_(0, dest, o.reshape(-1, o.shape[-1])[local])
        lse.index_copy_(0, dest, l.reshape(-1)[local].float())


def _tile_layout(group: torch.Tensor, n_groups: int, rows_budget: int, w: int) -> tuple[tuple, torch.Tensor]:
    """_tiled_attend's layout of items laid out by group (_tile_rows): the item each padded row
    copies (a padding row, item 0), the items in tile order (a run of tiles is a slice of them) and
    their rows, the number of tiles, the tile size, the tiles per call (a tile holds its padded rows
    and its chunk's w keys and w values: as many as rows_budget rows allow) and the first item of
    each run of them; and every tile's group."""
    tile, order, sorted_rows, tiles = _tile_rows(group, n_groups)
    source = torch.zeros(tiles.shape[0] * tile, dtype=torch.long, device=group.device)
    source[sorted_rows] = order
    per = max(1, rows_budget // (tile + 2 * w))
    bounds = torch.arange(0, tiles.shape[0] + per, per, device=group.device) * tile
    starts = torch.searchsorted(sorted_rows, bounds).tolist()
    return (source, order, sorted_rows, tiles.shape[0], tile, per, starts), tiles


def _tile_rows(group: torch.Tensor, n_groups: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay items out by group, each group padded to whole tiles: returns the tile size (the power of
    two nearest the mean count of the groups used, within TILE_MIN … TILE_MAX), the items in layout
    order, their rows in that layout (increasing) and every tile's group [n_tiles]."""
    order = group.argsort()
    counts = torch.bincount(group, minlength=n_groups)
    mean = group.shape[0] / max(1, int((counts > 0).sum()))
    tile = int(min(TILE_MAX, max(TILE_MIN, 2 ** round(math.log2(max(mean, 1.0))))))
    tiles_per = (counts + tile - 1) // tile
    tile_start = (torch.cumsum(tiles_per, 0) - tiles_per) * tile  # first row of each group
    item_start = torch.cumsum(counts, 0) - counts  # its first item in sorted order
    gs = group[order]
    rows = tile_start[gs] + torch.arange(group.shape[0], device=group.device) - item_start[gs]
    return tile, order, rows, torch.repeat_interleave(torch.arange(n_groups, device=group.device), tiles_per)
