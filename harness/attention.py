"""The core's attention module: the override that position-remapping methods (SelfExtend, DCA,
LongHeads, HCM, ...) register their attention rule into, the fused-kernel helpers they compute it
with (SDPA partials merged exactly by their log-sum-exp), and ALiBi, the position encoding of the
zoo's ALiBi model.

The override reads each layer's queries, keys and values through harness.projections (Llama's
separate projections, Phi-3's qkv_proj, GPT-NeoX's and Falcon's query_key_value, the query/key norms
of Qwen3, OLMo2 and Phi) and writes through the layer's own output projection.

transformers rotates keys *before* caching them, but these methods give one key several
positions (its own, a grouped one, a chunk-relative one). The override therefore caches keys
*before* rotation and hands the method raw queries, raw keys, values and absolute positions; the
method rotates them as its rule says, through the model's own rotary module (so a RoPE-scaling
method composed before it, e.g. yarn+selfextend, still applies). Because nothing rotated is ever
cached, generation with the KV cache computes exactly what a full recomputation would."""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from harness.patching import patched_forwards
from harness.projections import attention_modules, projections


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE (rotate-half convention, as Llama) to x [b, h, L, d] with cos/sin [b, L, r];
    only the first r dimensions rotate when the model's RoPE is partial."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    xr, rest = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2 :]
    out = xr * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


@dataclass
class AttentionInputs:
    q: torch.Tensor  # [b, h, Lq, d] queries, not rotated
    k: torch.Tensor  # [b, h_kv, Lk, d] keys, not rotated (a grouped-query model's KV heads: not repeated)
    v: torch.Tensor  # [b, h_kv, Lk, d]
    q_pos: torch.Tensor  # [b, Lq] absolute positions
    k_pos: torch.Tensor  # [b, Lk]
    allowed: torch.Tensor | None  # [b, 1, Lq, Lk] bool: causal and padding mask; None: causal by
    # cache index alone (no padding), built per block by mask()
    scaling: float
    rope: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # positions [b, L] -> cos, sin
    layer: int = 0  # the attention layer's index (methods that keep per-layer state)
    # (q_pos, k_pos) on the CPU, or what gives them when asked (the override's HostPositions); None: copied
    host: tuple[torch.Tensor, torch.Tensor] | Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None

    def on_host(self) -> tuple[torch.Tensor, torch.Tensor]:
        """q_pos and k_pos on the CPU, for the rules that choose their query blocks and parts from
        the positions: each value a GPU tensor gives the host (a part's bounds, a rule id) drains
        the GPU's queue first, and SelfExtend's blocks read a dozen. On the CPU they are the
        positions themselves."""
        if self.host is None:
            self.host = (self.q_pos.cpu(), self.k_pos.cpu())
        elif callable(self.host):
            self.host = self.host()
        return self.host

    def row(self, b: int) -> AttentionInputs:
        """The inputs of batch row b alone (a batch of one)."""
        one = slice(b, b + 1)
        allowed = None if self.allowed is None else self.allowed[one]
        return replace(
            self,
            q=self.q[one],
            k=self.k[one],
            v=self.v[one],
            q_pos=self.q_pos[one],
            k_pos=self.k_pos[one],
            allowed=allowed,
            host=None if self.host is None else tuple(t[one] for t in self.on_host()),
        )

    def repeated(self) -> AttentionInputs:
        """These inputs with a copy of its KV head's keys and values for every query head [b, h, Lk,
        d], for rules that treat query heads one by one (LongLoRA's shifted heads, ALiBi's slopes).
        A copy of the layer's whole cache, g times over: rules that attend through attend_lse or
        chunk_attend, or index a query head's KV head (LongHeads), do without it."""
        g = self.q.shape[1] // self.k.shape[1]
        if g == 1:
            return self
        return replace(self, k=self.k.repeat_interleave(g, dim=1), v=self.v.repeat_interleave(g, dim=1))

    def mask(self, s: int = 0, e: int | None = None) -> torch.Tensor:
        """allowed[:, :, s:e] [b, 1, e - s, Lk]; without padding only this block of the causal mask
        is built (the whole L x L one would be 1 GiB of booleans at 32k)."""
        lq, lk = self.q.shape[2], self.k.shape[2]
        e = lq if e is None else e
        if self.allowed is not None:
            return self.allowed[:, :, s:e]
        qi = torch.arange(lk - lq + s, lk - lq + e, device=self.q.device)[:, None]
        return (torch.arange(lk, device=self.q.device)[None, :] <= qi)[None, None].expand(self.q.shape[0], 1, -1, -1)


def softmax_attend(logits: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Masked softmax then values. Works in place on `logits` (callers hand over a fresh tensor):
    at long context every copy of a logits block costs as much as the matmul that made it."""
    if logits.requires_grad:  # training (the zoo's ALiBi model): autograd needs the originals
        probs = torch.softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
        return torch.nan_to_num(probs).to(v.dtype) @ v
    logits = logits.float()
    logits.masked_fill_(~allowed, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return probs.nan_to_num_().to(v.dtype) @ v  # a fully masked (padding) row gives zeros


# Queries per block of banded_attend: no part's mask spans the whole prompt. A whole GPU prefill
# chunk (2,048 tokens) is one block: each block costs the GPU over a hundred kernel launches
# whatever its size, and blocks of 512 made SelfExtend 10x the baseline's launches at 32k with
# Llama-3-8B's heads (benchmarks/launches.py). The CPU prefills 512 tokens per forward, so its
# blocks are unchanged.
QUERY_CHUNK = 2048


def attend_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, allowed: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp per query (to merge partial attentions exactly);
    allowed None: every query sees every key. Keys and values may have fewer heads than the queries
    (grouped-query attention): a KV head's g query heads then attend as g·Lq queries of that head,
    so that no repeated copy of the keys exists and the kernel reads each key once.
    PyTorch's fused kernels return the LSE and never build a logits matrix: the flash kernel on
    CPU, the memory-efficient one on CUDA (both private aten ops, so any failure falls back). The
    explicit computation is the reference (tests/test_position_remapping.py) and the autograd path."""
    g = q.shape[1] // k.shape[1]
    if g > 1:
        b, h, lq, d = q.shape
        out, lse = attend_lse(q.reshape(b, h // g, g * lq, d), k, v, scaling, _grouped_mask(allowed, h, h // g, lq))
        return out.reshape(b, h, lq, -1), lse.reshape(b, h, lq)
    if not torch.is_grad_enabled() and q.dtype in (torch.float32, torch.float16, torch.bfloat16):
        try:
            return _fused_lse(q, k, v, scaling, allowed)
        except (RuntimeError, AttributeError) as e:  # an op missing or refusing these shapes
            _warn_fallback(e)
    logits = ((q @ k.transpose(2, 3)) * scaling).float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    return torch.nan_to_num(torch.softmax(logits, dim=-1)).to(v.dtype) @ v, lse


def _grouped_mask(allowed: torch.Tensor | None, h: int, hkv: int, lq: int) -> torch.Tensor | None:
    """allowed [b, 1 or H_kv or H, Lq or 1, Lk] for queries laid out [b, H_kv, g·Lq, d] (row j·Lq + i:
    the KV head's j-th query head, query i)."""
    if allowed is None:
        return None
    if allowed.shape[1] == h:  # one mask per query head
        b, lk = allowed.shape[0], allowed.shape[-1]
        return allowed.expand(b, h, lq, lk).reshape(b, hkv, h // hkv * lq, lk)
    # one mask for every head, or one per KV head: the same rows for each of its query heads
    return allowed if allowed.shape[2] == 1 else allowed.repeat(1, 1, h // hkv, 1)


_FELL_BACK: list[str] = []


def _warn_fallback(e: Exception) -> None:
    """Say once per process that the slow path runs: its speed and memory are not the fused ones."""
    if not _FELL_BACK:
        _FELL_BACK.append(str(e))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        warnings.warn(f"fused attention with log-sum-exp unavailable ({first}); using explicit logits", stacklevel=3)


def _fused_lse(q, k, v, scaling, allowed):
    bias = None
    # an additive mask, even when every key is allowed: reading whether one is would sync a GPU
    if allowed is not None:
        bias = additive_mask(allowed, q.dtype, align=8 if q.device.type == "cuda" else 1)
    if q.device.type == "cpu":  # (strided keys and values are fine, and a copy costs more)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=bias, scale=scaling
        )
        return out, _no_keys_to_neginf(lse, allowed, bias)
    if q.device.type == "cuda":
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if bias is not None:
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], -1)  # (a key-padding row: one for every query)
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, True, 0.0, False, scale=scaling
        )[:2]
        return out, _no_keys_to_neginf(lse[..., : q.shape[2]].float(), allowed, bias)  # LSE padded to 32s
    raise RuntimeError(f"no fused attention with log-sum-exp on {q.device.type}")


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype, align: int = 1) -> torch.Tensor:
    """0 where allowed, -inf elsewhere, its rows `align` elements apart in memory: CUDA's
    memory-efficient kernel refuses a bias whose row stride is not a multiple of 8 (a key count of
    511 failed there and fell back to explicit logits), so the rows are padded and the view sliced."""
    lk = allowed.shape[-1]
    padded = torch.zeros((*allowed.shape[:-1], -(-lk // align) * align), dtype=dtype, device=allowed.device)
    return padded[..., :lk].masked_fill_(~allowed, float("-inf"))


def _no_keys_to_neginf(lse, allowed, bias):
    """The kernels give a query with every key masked zeros but an LSE of 0 (CPU); merging needs
    -inf there, the log of an empty sum, so that part weighs nothing."""
    return lse if bias is None else lse.masked_fill(~allowed.any(dim=-1), float("-inf"))


def merge_partials(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Combine attentions over disjoint key sets, given each one's output and log-sum-exp: the
    result equals one softmax over the union (a query no key may see gets zeros)."""
    return merge_stacked(torch.stack([p[0] for p in parts], -2), torch.stack([p[1] for p in parts], -1))


def merge_stacked(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """merge_partials of parts stacked along out's second-to-last dimension [..., n, d], with their
    log-sum-exp [..., n] (LongHeads' k chunks per query: one merge, not one op per part)."""
    top = lse.max(dim=-1, keepdim=True).values.nan_to_num(neginf=0.0)
    w = torch.exp(lse.float() - top)  # exp(-inf) = 0 for empty parts
    w = w / w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return (w.unsqueeze(-2) @ out.float()).squeeze(-2).to(out.dtype)


def chunk_attend(q, k, v, n0: int, scaling: float, valid=None) -> torch.Tensor:
    """q [b, H, c, d], the queries of the keys n0 … n0 + c − 1, over k/v [b, H_kv, n, d]: every key
    before n0, and the chunk's own keys causally (the kv engine's cache, LongHeads' in-window
    queries); valid [b, H_kv, n] (bool) masks the keys a head does not hold.

    Grouped-query heads go through the grouped layout (attend_lse: a KV head's query heads as extra
    queries of that head), so each key is read once. SDPA's enable_gqa read it once per query head
    (a decoding step at 32k with Llama-3-8B's 32 / 8 heads: about 3.5x this time on CPU), and with a mask
    CUDA's dispatch has no fused kernel for it: the math path, which builds the logits in float32.
    A chunk attends in two fused parts merged by their log-sum-exp, the keys before it (no causal
    mask) and its own (causal), so that no chunk x context mask is ever built."""
    b, h, c, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    held = None if valid is None else valid[:, :, None, :]
    if c == 1:  # decoding: the query sees every key held (public SDPA: no log-sum-exp needed)
        grouped = q.reshape(b, hkv, h // hkv, d)
        return F.scaled_dot_product_attention(grouped, k, v, attn_mask=held, scale=scaling).reshape(b, h, 1, d)
    causal = (torch.arange(n - n0, device=q.device)[None, :] <= torch.arange(c, device=q.device)[:, None])[None, None]
    parts = [attend_lse(q, k[:, :, n0:], v[:, :, n0:], scaling, causal if held is None else causal & held[..., n0:])]
    if n0:
        parts.append(attend_lse(q, k[:, :, :n0], v[:, :, :n0], scaling, None if held is None else held[..., :n0]))
    return parts[0][0] if len(parts) == 1 else merge_partials(parts)


def banded_attend(
    a: AttentionInputs,
    rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    queries: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    key_positions: Callable[[int, torch.Tensor], torch.Tensor],
    period: int | None = None,
) -> torch.Tensor:
    """Softmax attention in query blocks for methods that rotate a query-key pair by one of a few
    rules chosen by the pair's positions (SelfExtend: neighbour or grouped; DCA: intra-chunk,
    successive-chunk or inter-chunk).

    `rule(q_pos [b, n, 1], k_pos [b, 1, m])` gives each pair's rule id [b, n, m]; it must not
    decrease as the query moves forward with the key fixed (both papers' rules grow with the
    distance). `queries(r, q, q_pos)` rotates a block's queries for rule r;
    `key_positions(r, k_pos)` gives the positions keys rotate at under rule r. Keys are rotated
    per part, for the part's keys only: no rotated copy of every key exists (one per rule, of the
    whole context, was most of these methods' memory beyond the cache). For a block, a key whose rule is the same for the block's first and
    last query (in every row) is *uniform*: each run of uniform keys with one rule is one part,
    and the keys in between (the band where the rule changes within the block) give one part per
    rule, masked to the pairs that take it. Every part goes through the fused kernel (no logits
    block is built); the parts merge exactly by their log-sum-exp (as the official DCA merges its
    flash partials), keys past the block's causal limit are skipped, and no L x L matrix ever
    exists. `period`: cut blocks where q_pos // period changes (DCA's chunks), so that a block's
    keys are all uniform and no part needs a rule mask."""
    q_host, k_host = a.on_host()  # the blocks and parts are chosen on the host: no GPU sync per bound
    if a.q.shape[0] > 1 and not bool((q_host == q_host[:1]).all()):
        # Rows at different positions (padding shifts them) take different rules for one key index,
        # so few keys would be uniform across the batch and most parts would need a rule mask over
        # the whole context (DCA at 16k, batch 2, 3 tokens of padding: 1.4x the unpadded time): one
        # row at a time, each with uniform keys of its own.
        return torch.cat([banded_attend(a.row(b), rule, queries, key_positions, period) for b in range(a.q.shape[0])])
    lq, lk = a.q.shape[2], a.k.shape[2]
    past = lk - lq  # query i sits at key index past + i
    # With padding, a key within a block's causal limit is seen by every real query of the block
    # unless it is padding: transformers' mask is causal and key padding, so the last query's row
    # (the newest token, whose causal range is every key) says which keys are padding. Those parts
    # take that row [b, 1, 1, keys] instead of the block's [b, 1, queries, keys] mask, whose float
    # copy for the fused kernel was b x 512 x keys per part (512 MiB a part at 32k, batch 8).
    # Only padding queries' outputs can differ, and nothing real reads them.
    key_padding = None if a.allowed is None else a.allowed[:, :, -1:]

    def keys(r: int, k0: int, k1: int) -> torch.Tensor:
        return rotate(a.k[:, :, k0:k1], *a.rope(key_positions(r, a.k_pos[:, k0:k1])))

    outs = []
    for s, e in _query_blocks(q_host[0], period):
        q, qp, ke = a.q[:, :, s:e], a.q_pos[:, s:e], past + e
        allowed, kp, qh = a.mask(s, e), k_host[:, None, :ke], q_host[:, s:e]
        first = rule(qh.min(dim=1).values[:, None, None], kp)[:, 0]  # [b, ke], on the host
        last = rule(qh.max(dim=1).values[:, None, None], kp)[:, 0]
        uniform = ((first == last) & (first == first[:1])).all(dim=0)
        mixed = (~uniform).nonzero()[:, 0].tolist()
        x0, x1 = (mixed[0], mixed[-1] + 1) if mixed else (ke, ke)
        parts, rotated = [], {}

        def rotated_queries(r: int) -> torch.Tensor:  # once per rule and block (a run and the band share them)
            if r not in rotated:
                rotated[r] = queries(r, q, qp)
            return rotated[r]

        for k0, k1 in _runs(first[0], 0, x0) + _runs(first[0], x1, ke):
            r = int(first[0, k0])
            if k1 - 1 > past + s:  # past the block's first query: the block's own mask
                mask = allowed[..., k0:k1]
            else:  # the block's first query sees them all: padding aside, every query does
                mask = None if key_padding is None else key_padding[..., k0:k1]
            parts.append(attend_lse(rotated_queries(r), keys(r, k0, k1), a.v[:, :, k0:k1], a.scaling, mask))
        if x1 > x0:  # where the rule changes within the block: one masked part per rule
            ids = rule(qp[:, :, None], a.k_pos[:, None, x0:x1]).unsqueeze(1)  # [b, 1, n, x1 - x0]
            for r in range(int(first[:, x0:x1].min()), int(last[:, x0:x1].max()) + 1):  # (the rule is monotone)
                parts.append(
                    attend_lse(
                        rotated_queries(r),
                        keys(r, x0, x1),
                        a.v[:, :, x0:x1],
                        a.scaling,
                        allowed[..., x0:x1] & (ids == r),
                    )
                )
        outs.append(merge_partials(parts) if len(parts) > 1 else parts[0][0])
    return torch.cat(outs, dim=2)


def _query_blocks(q_pos: torch.Tensor, period: int | None) -> list[tuple[int, int]]:
    """[start, end) of the query blocks: at most QUERY_CHUNK long, cut where q_pos // period changes."""
    n = q_pos.shape[0]
    cuts = [0]
    if period:
        cuts += ((q_pos[1:] // period != q_pos[:-1] // period).nonzero()[:, 0] + 1).tolist()
    cuts.append(n)
    return [(s, min(s + QUERY_CHUNK, e)) for a, e in zip(cuts, cuts[1:]) for s in range(a, e, QUERY_CHUNK)]


def _runs(ids: torch.Tensor, start: int, end: int) -> list[tuple[int, int]]:
    """[k0, k1) of the runs of equal ids within [start, end)."""
    if end <= start:
        return []
    cuts = ((ids[start + 1 : end] != ids[start : end - 1]).nonzero()[:, 0] + start + 1).tolist()
    bounds = [start, *cuts, end]
    return list(zip(bounds, bounds[1:]))


def _allowed(attention_mask, lk: int) -> torch.Tensor | None:
    if attention_mask is None:  # no padding: causal by cache index (AttentionInputs.mask builds blocks)
        return None
    m = attention_mask[..., :lk]
    return m if m.dtype == torch.bool else m == 0


def _rotary_module(model):
    found = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]
    if not found:
        raise ValueError("the model has no rotary embedding module")
    return found[0]


def call_arguments(sig: inspect.Signature, m, args: tuple, kwargs: dict) -> dict:
    """The arguments of a call of attention module m's own forward (signature `sig`), by name, its
    **kwargs merged in: families name and order them differently (GPT-NeoX and Falcon pass
    `layer_past`)."""
    bound = sig.bind_partial(m, *args, **kwargs).arguments
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            bound = {**bound, **bound.pop(name, {})}
    return bound


class HostPositions:
    """Each layer's key positions on the CPU (AttentionInputs.on_host), kept only for the calls
    that ask: one copy of a forward's positions, which its layers share, and per layer a buffer
    that doubles when full, so that a decoding step appends its position instead of copying the
    whole history (32 layers x 1 MB per token at 128k)."""

    def __init__(self):
        self.of: torch.Tensor | None = None  # the forward's position_ids, and their copy
        self.copy: torch.Tensor | None = None
        self.kept: dict[int, tuple[torch.Tensor, int]] = {}  # layer -> (buffer [b, capacity], length)

    def forget(self, layer: int) -> None:  # a new sequence: nothing kept is its
        self.kept.pop(layer, None)

    def get(self, layer: int, position_ids, q_pos, k_pos) -> tuple[torch.Tensor, torch.Tensor]:
        if self.of is not position_ids:
            self.of, self.copy = position_ids, position_ids.cpu()
        q = self.copy.expand(q_pos.shape[0], -1)
        buf, n = self.kept.get(layer, (None, 0))
        past = k_pos.shape[1] - q.shape[1]
        if buf is None or n != past or buf.shape[0] != q.shape[0]:  # a call that did not ask came between
            buf, n = (k_pos[:, :past].cpu() if past else q.new_empty(q.shape[0], 0)), past
        if buf.shape[1] < n + q.shape[1]:
            grown = buf.new_empty(buf.shape[0], max(2 * buf.shape[1], n + q.shape[1]))
            grown[:, :n] = buf[:, :n]
            buf = grown
        buf[:, n : n + q.shape[1]] = q
        self.kept[layer] = (buf, n + q.shape[1])
        return q, buf[:, : n + q.shape[1]]


@contextlib.contextmanager
def attention_override(model, attend: Callable[[AttentionInputs], torch.Tensor], counter=None):
    """Replace every attention layer's forward; `attend` returns the output [b, h, Lq, d].
    The layer's queries, keys and values come from its own projections through
    harness.projections (fused or separate, with the family's query/key norms).
    counter: telemetry that counts the patched calls (the methods' effect check)."""
    from harness.compat import attention_refusal
    from harness.errors import Refused

    reason = attention_refusal(model)
    if reason:  # an unknown projection layout, sliding windows, no RoPE...: refused, never a half-working patch
        raise Refused(reason)
    modules = attention_modules(model)
    rotary = _rotary_module(model)
    key_positions: dict[int, torch.Tensor] = {}
    host = HostPositions()

    def make_forward(m):
        p, sig = projections(m), inspect.signature(type(m).forward)

        def forward(*args, **kwargs):
            a = call_arguments(sig, m, args, kwargs)
            hidden_states, cache_position = a["hidden_states"], a.get("cache_position")
            past_key_values = a.get("past_key_values", a.get("layer_past"))
            b, lq = hidden_states.shape[:2]
            q, k, v = p.project(hidden_states)
            position_ids = a.get("position_ids")
            if position_ids is None:
                position_ids = cache_position[None]
            q_pos = position_ids.expand(b, -1)
            past = 0
            if past_key_values is not None:
                past = past_key_values.get_seq_length(m.layer_idx)
                k, v = past_key_values.update(k, v, m.layer_idx, {"cache_position": cache_position})
            k_pos = q_pos if past == 0 else torch.cat([key_positions[m.layer_idx], q_pos], dim=1)
            key_positions[m.layer_idx] = k_pos
            if past == 0:
                host.forget(m.layer_idx)
            lk = k.shape[2]
            inputs = AttentionInputs(
                q,
                k,
                v,
                q_pos,
                k_pos,
                _allowed(a.get("attention_mask"), lk),
                p.scaling,
                lambda pos: tuple(t.to(q.dtype) for t in rotary(q, pos)),
                m.layer_idx,
                lambda: host.get(m.layer_idx, position_ids, q_pos, k_pos),
            )
            return p.output(attend(inputs)), None

        return forward

    with patched_forwards(modules, make_forward, counter, ATTENTION_CALLS):
        yield


ATTENTION_CALLS = "patched_calls.attention"

# -- ALiBi --------------------------------------------------------------------------------------
ALIBI_CONFIG_FLAG = "harness_position_encoding"  # config.json field of models pretrained with ALiBi
BIAS_ELEMENTS = 2**24  # bias entries per fused call (64 MiB in float32): queries go in blocks


def alibi_slopes(heads: int) -> torch.Tensor:
    """m_h = 2^(−8h/H), h = 1..H; for H not a power of two, the slopes of the nearest lower power of
    two followed by every other slope of twice that power (the paper's reference code)."""

    def power_of_two(n: int) -> list[float]:
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]

    if heads & (heads - 1) == 0:
        return torch.tensor(power_of_two(heads))
    low = 2 ** math.floor(math.log2(heads))
    return torch.tensor(power_of_two(low) + power_of_two(2 * low)[0::2][: heads - low])


def alibi_attend(a: AttentionInputs) -> torch.Tensor:
    """Attention with no rotation and the bias −m_h·(i − j) added to each logit (Press et al. 2022).
    The bias goes to the fused kernel as an additive mask (−inf where the causal or padding mask
    forbids), built for a block of queries at a time so that no [queries x keys] tensor of the
    whole prompt exists; a query no key may see gets zeros."""
    a = a.repeated()  # (the slopes are per query head)
    b, h, lq, lk = a.q.shape[0], a.q.shape[1], a.q.shape[2], a.k.shape[2]
    slopes = alibi_slopes(h).to(a.q.device, torch.float32)[None, :, None, None]
    step = max(1, min(lq, BIAS_ELEMENTS // max(1, b * h * lk)))
    outs = []
    for s in range(0, lq, step):
        e = min(lq, s + step)
        distance = (a.q_pos[:, s:e, None] - a.k_pos[:, None, :]).unsqueeze(1).float()
        bias = (-slopes * distance).masked_fill_(~a.mask(s, e), float("-inf")).to(a.q.dtype)
        out = torch.nn.functional.scaled_dot_product_attention(
            a.q[:, :, s:e], a.k, a.v, attn_mask=bias, scale=a.scaling
        )
        outs.append(out.nan_to_num() if out.requires_grad else out.nan_to_num_())
    return torch.cat(outs, dim=2)


class AttentionMethod:
    """Mixin for methods that replace attention: the effect check is that the patch ran."""

    def check_effect(self, lm, ctx, result) -> str | None:
        return None if lm.telemetry[ATTENTION_CALLS] else "the patched attention was never called"
