"""`Run`: one prompt through the kv engine's cache: the per-layer caches over one SlotStore, the
phase (prefill, decode), the budget, the positions fed, and the attention itself (SDPA, or
explicit probabilities by query chunk for methods that `observe` them)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from harness.attention import chunk_attend
from harness.methods.kv._cache import REFERENCE_BYTES, LayerCache, SlotStore
from harness.methods.kv._eviction import kept_target
from harness.methods.kv._rerotation import rerotation_angles

if TYPE_CHECKING:
    from harness.methods.kv._common import KVMethod

STAT_ELEMENTS = 1 << 24  # logits materialised at once when a method needs attention probabilities


class Run:
    """One prompt through the cache: per-layer caches, the phase, the budget, positions."""

    def __init__(
        self,
        method: KVMethod,
        budget: float,
        generator: torch.Generator,
        inv_freq,
        protect: int = 0,
        rows: dict[int, int] | None = None,
    ):
        self.method, self.budget, self.generator, self.inv_freq = method, budget, generator, inv_freq
        self.layers: dict[int, LayerCache] = {}
        self.rows = rows or {0: 0}  # attention layer_idx -> its row of the shared SlotStore
        self.n_layers = len(self.rows)
        self.store: SlotStore | None = None
        self._all: LayerCache | None = None
        self.phase = "prefill"
        self.dense = budget == 1.0  # the same loop, nothing compressed
        self.n_context = 0  # tokens of the compressed context
        self.target = 0  # kept tokens per layer and head (budget_unit "tokens")
        self.next_pos = 0  # original position of the next token
        self.protect = protect  # leading tokens a quantizer must leave lossless (IntactKV)
        self.step = 0  # decoding steps so far
        self.max_new = 0  # decoding steps this call will take (Keyformer's temperature schedule)
        self._tokens: list[int] = []  # token ids fed so far (read through `tokens`)
        self._unread: list[torch.Tensor] = []  # generated tokens fed from the device, not read yet
        self.policy_s = 0.0
        self.scaling = 1.0
        self.query_pos: torch.Tensor | None = None  # original positions of the queries `observe` sees
        self.query_start = 0  # query_pos[0], as an int
        self.shift = 0  # method.rope_shift at the start of the current forward
        self._shifted = None  # (the model's cos/sin, the same advanced by `shift`) for this forward
        self.memo: dict = {}  # values a method computes once for all layers (e.g. angles)
        self.clock = time.perf_counter  # the Driver's device_clock: policy timings on a GPU are device time

    def positions(self, c: int, device=None) -> torch.Tensor:
        if self.method.positions == "cache" and self.layers:
            start = next(iter(self.layers.values())).n
        else:
            start = self.next_pos
        return torch.arange(start, start + c, device=device)

    def feed(self, ids: list[int] | torch.Tensor) -> None:
        """Record the token ids of a forward: a list, or a tensor on the device, read only if asked."""
        if isinstance(ids, torch.Tensor):
            self._unread.append(ids)
        else:
            self.tokens.extend(ids)

    @property
    def tokens(self) -> list[int]:
        """Token ids fed so far (FastGen's special / punctuation tokens); reading generated ones syncs."""
        if self._unread:
            self._tokens += torch.cat(self._unread).tolist()
            self._unread = []
        return self._tokens

    def shifted_rope(self, position_embeddings):
        """The model's cos/sin advanced by `shift` positions (angle addition, so a RoPE-scaling
        method's attention factor is kept), computed once per forward; angles in float64."""
        cos, sin = position_embeddings
        if self._shifted is None or self._shifted[0] is not cos:
            t0 = self.clock()
            c2, s2 = rerotation_angles(self.shift, self.inv_freq, cos.dtype)
            c2, s2 = c2.to(cos.device), s2.to(cos.device)
            self._shifted = (cos, (cos * c2 - sin * s2, sin * c2 + cos * s2))
            self.policy_s += self.clock() - t0
        return self._shifted[1]

    def attend(self, layer: int, q, k, v, scaling: float) -> torch.Tensor:
        """q [1, H, c, d], k/v [1, H_kv, c, d] (rotated) -> output [1, H, c, d]."""
        self.scaling = scaling
        lc = self.layers.get(layer)
        if lc is None:
            if self.store is None:
                self.store = SlotStore(k, self.n_layers)
            row = self.rows[layer]
            lc = self.layers[layer] = LayerCache(k, self.store, slice(row, row + 1))
        c = q.shape[2]
        pos = torch.arange(self.next_pos, self.next_pos + c, device=k.device).expand(*k.shape[:2], c)
        out = None if self.dense else self.method.attend_cache(lc, q, k, v, pos, self)
        if out is None:
            out = self.append_attend(lc, q, k, v, pos)
        w = self.method.query_window()
        if self.phase == "prefill" and w and not self.dense:
            lc.queries = q[:, :, -w:] if lc.queries is None else torch.cat([lc.queries, q], dim=2)[:, :, -w:]
        if self.compressing_decode() and not self.method.all_layers:
            t0 = self.clock()
            self.method.compress_decode(lc, self)
            self.policy_s += self.clock() - t0
        return out

    def attend_shared(self, layer: int, q, scaling: float) -> torch.Tensor:
        """A Cross-Layer Attention reuser (harness.cla): q [1, H, c, d] (rotated) attends to `layer`'s
        cache as its producer left it in this forward (this chunk appended); it appends nothing and
        has no cache of its own, so bytes and kept tokens count the producing layers only."""
        lc = self.layers[layer]
        return self.sdpa(lc, q, lc.n - q.shape[2], scaling)

    def append_attend(self, lc: LayerCache, q, k, v, pos, lse: bool = False):
        """The engine's own step: append the chunk, attend over the cache (explicitly, feeding
        `observe`, when the method accumulates statistics); with lse also the log-sum-exp of the
        logits per query [1, H, c] (explicit attention), for methods that add to the softmax."""
        n0 = lc.n
        lc.append(k, v, pos)
        if lse or (self.method.accumulates and not self.dense):
            return self._explicit(lc, q, n0, self.scaling, lse)
        return self.sdpa(lc, q, n0, self.scaling)

    def compressing_decode(self) -> bool:
        return self.phase == "decode" and not self.dense and self.method.compresses in ("decode", "both")

    def all_layers(self) -> LayerCache:
        """Every layer's cache as one LayerCache [L, H_kv, n, ...] over the shared SlotStore, with
        its own persistent `state` (the layers must hold the same number of slots)."""
        ns = {lc.n for lc in self.layers.values()}
        if len(ns) != 1 or len(self.layers) != self.n_layers:
            raise RuntimeError(f"kv: all_layers needs all {self.n_layers} layers at one length, got {sorted(ns)}")
        if self._all is None:
            self._all = LayerCache(None, self.store, slice(None))
        self._all.n = ns.pop()
        return self._all

    def compress_decode_all(self) -> None:
        """After a decoding forward, a method with `all_layers` evicts in every layer at once (the
        same choice per layer as evicting right after its attention: a layer's cache is next read
        by its own attention in the next forward)."""
        if not (self.method.all_layers and self.compressing_decode() and self.layers):
            return
        t0 = self.clock()
        self._on_all_layers(self.method.compress_decode)
        self.policy_s += self.clock() - t0

    def _on_all_layers(self, hook) -> None:
        everything = self.all_layers()
        hook(everything, self)
        for lc in self.layers.values():
            lc.n = everything.n

    def sdpa(self, lc: LayerCache, q, n0: int, scaling: float) -> torch.Tensor:
        return chunk_attend(q, lc.k, lc.v, n0, scaling, lc.valid)

    def _explicit(self, lc: LayerCache, q, n0: int, scaling: float, lse: bool = False):
        b, h, c, d = q.shape
        hkv, n = lc.k.shape[1], lc.n
        g = h // hkv
        keys_t, values = lc.k.transpose(-1, -2), lc.v  # a KV head's query heads share one matmul
        step = max(1, STAT_ELEMENTS // (h * n))
        outs, lses = [], []
        for s in range(0, c, step):
            qs = q[:, :, s : s + step]
            cs = qs.shape[2]
            logits = (qs.reshape(b, hkv, g * cs, d) @ keys_t).float().view(b, hkv, g, cs, n) * scaling
            if cs > 1 or lc.valid is not None:  # a single decoding query sees every slot
                allowed = (
                    torch.arange(n, device=q.device)[None, :]
                    <= torch.arange(n0 + s, n0 + s + cs, device=q.device)[:, None]
                )
                if lc.valid is not None:
                    allowed = allowed & lc.valid[:, :, None, None, :]
                logits = logits.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            if lse:
                lses.append(torch.logsumexp(logits, dim=-1).view(b, h, cs))
            self.query_start = self.next_pos + s
            self.query_pos = torch.arange(self.query_start, self.query_start + cs, device=q.device)
            t0 = self.clock()
            self.method.observe(lc, probs, logits, self)
            self.policy_s += self.clock() - t0
            outs.append((probs.to(values.dtype).view(b, hkv, g * cs, n) @ values).view(b, h, cs, d))
        out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        return (out, torch.cat(lses, dim=2)) if lse else out

    def compress_prefill(self) -> None:
        self.n_context = self.next_pos
        self.target = kept_target(self.budget, self.n_context)
        if self.dense:
            return
        if self.method.all_layers and self.layers:  # one call, so that decoding starts from its state
            self._on_all_layers(self.method.compress_prefill)
            return
        for lc in self.layers.values():
            self.method.compress_prefill(lc, self)
            lc.queries = None

    def kept_tokens(self) -> float:
        return sum(lc.kept() for lc in self.layers.values()) / max(1, len(self.layers))

    def bytes(self) -> float:
        return sum(self.method.layer_bytes(lc, self) for lc in self.layers.values())

    def dense_bytes(self) -> float:
        """Bytes the uncompressed cache would hold now: every token fed, at fp16."""
        return sum(2 * self.next_pos * lc.k.shape[1] * lc.k.shape[-1] * REFERENCE_BYTES for lc in self.layers.values())

    def held_bytes(self) -> int:
        return sum(lc.held_bytes() for lc in self.layers.values())
