"""The engine of the KV-cache family: a cache this module owns and a policy (the method) over it.

While a kv method's context is active, every attention layer runs `_attention_forward` below and
the LM's two batch hooks run a manual loop, one prompt at a time (per-head eviction makes batch
rows ragged, and the papers' own loops run at batch 1 too):

    prefill the context in query chunks of PREFILL_CHUNK (the cache holds every context token)
      -> method.compress_prefill(layer, run) for every layer          (methods that compress at prefill)
    feed the question, the scored continuation or the generated tokens
      -> method.compress_decode(layer, run) inside each layer, after each fed chunk  (while decoding)
         or, for a method with `all_layers`, once after the forward with every layer's cache as
         one (Run.all_layers: the layers share one SlotStore, so an eviction is one operation per
         tensor for the whole model instead of one per layer)

Positions. Keys are cached after RoPE at each token's original position, so evicting a token
never moves the others and new tokens continue at the original length (kvpress's pipeline). A
method with `positions = "cache"` (StreamingLLM) re-rotates kept keys exactly by the position delta
(RoPE(a)·RoPE(b) = RoPE(a+b), kvpress's KeyRerotationPress) and feeds new tokens at the cache length;
a shift its keys still owe (`rope_shift`) is applied to the fed tokens' RoPE instead (`Run.shifted_rope`).

Attention. SDPA, unless the method accumulates attention statistics (`accumulates`); then the
probabilities are computed explicitly by query chunk (at most STAT_ELEMENTS logits at a time: never
an L x L matrix at long context) and `method.observe` folds each chunk into a per-token score that
moves with its token when tokens are evicted. Scores are per KV head (summed over its query heads).

Budgets. `budget` <= 1 is a fraction of the context's tokens, > 1 a token count (per layer and
head). Tasks override it per call with `LM.kv_request_for(KVRequest(budget=...))` (1.0: dense, the
same loop with no compression: the baseline the kv_compression task times and scores against). The
request also says how many final prompt tokens are the question (`question_tokens`: fed after
compression, the query-agnostic protocol of kvpress) and, when scoring text, how many final tokens
are decoded one at a time (`decode_tokens`; default half the text, so perplexity under a kv method
measures decoding with the compressed cache). While a method is applied, `LM.kv_policy` is its
Driver (one per LM: a second kv method is refused).

Telemetry (sums over calls; tasks read the deltas around one call): kv.calls, kv.context_tokens,
kv.kept_tokens (kept context tokens after prefill compression, mean over layers and heads),
kv.bytes and kv.dense_bytes (counted at REFERENCE_BYTES per element, as the papers' fp16 caches
hold them; quantizers count bits, scales and zero points), kv.compressed_calls, kv.peak_cache_bytes
(a max: tensors the cache held), kv.prefill_s, kv.decode_s, kv.decode_steps, kv.policy_s (time in the
method's own bookkeeping while decoding). On a GPU every timing synchronizes the device first
(`device_clock`), so it is the device's time, not the host's time to enqueue the kernels."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.attention import _attention_modules, _rotary_module, rotate
from harness.patching import patched_forwards
from harness.provenance import device_clock

REFERENCE_BYTES = 2  # fp16
PREFILL_CHUNK = 512  # queries per prefill forward
STAT_ELEMENTS = 1 << 24  # logits materialised at once when a method needs attention probabilities
PATCHED = "patched_calls.kv_attention"


class SlotStore:
    """The per-slot tensors of every layer of a Run in one storage each: keys and values
    [L, H_kv, cap, d], positions [L, H_kv, cap], the score and named slots; grown by doubling for
    all layers at once, so that a method can evict in every layer with one operation per tensor
    (`Run.all_layers`). `version` changes whenever a storage is replaced."""

    def __init__(self, like: torch.Tensor, n_layers: int):
        _, h, _, d = like.shape
        self.k = like.new_empty(n_layers, h, 0, d)
        self.v = like.new_empty(n_layers, h, 0, d)
        self.pos = torch.empty(n_layers, h, 0, dtype=torch.long, device=like.device)
        self.score: torch.Tensor | None = None
        self.slots: dict[str, tuple[torch.Tensor, object]] = {}  # name -> (storage, fill of new slots)
        self.cap, self.version = 0, 0

    def tensors(self) -> list[torch.Tensor]:
        return (
            [self.k, self.v, self.pos]
            + ([self.score] if self.score is not None else [])
            + [t for t, _ in self.slots.values()]
        )

    def reserve(self, n: int) -> None:
        if n <= self.cap:
            return
        cap = max(64, 2 * n)
        self.k, self.v, self.pos = (_grown(t, cap, self.cap) for t in (self.k, self.v, self.pos))
        if self.score is not None:
            self.score = _grown(self.score, cap, self.cap)
        self.slots = {name: (_grown(t, cap, self.cap), fill) for name, (t, fill) in self.slots.items()}
        self.cap, self.version = cap, self.version + 1

    def add_slot(self, name: str, fill, dtype, trailing: tuple) -> None:
        self.slots[name] = (torch.full((*self.k.shape[:3], *trailing), fill, dtype=dtype, device=self.k.device), fill)
        self.version += 1

    def add_score(self) -> None:
        self.score = self.k.new_zeros(self.k.shape[:3])
        self.version += 1


class LayerCache:
    """One layer's cache (or, from `Run.all_layers`, every layer's): keys (after RoPE) and values
    [1, H_kv, n, d], the original position of every slot [1, H_kv, n], an optional per-token score
    [1, H_kv, n], named per-slot tensors (`slot`) and `state` for the method. Every per-slot
    tensor is a view of the first n slots of this layer's rows of a SlotStore, so appending a
    decoded token, or moving the newest slot into an evicted one, copies nothing else."""

    def __init__(self, like: torch.Tensor, store: SlotStore | None = None, rows: slice = slice(0, 1)):
        self.store = store if store is not None else SlotStore(like, 1)
        self.rows = rows
        self.n = 0
        self.state: dict = {}
        self.queries: torch.Tensor | None = None  # the last `query_window` queries (after RoPE)
        self._version = -1
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None  # (layer, head) rows, for per-head copies

    def _views(self) -> "LayerCache":
        st = self.store
        if self._version != st.version:
            r = self.rows
            self._kr, self._vr, self._pr = st.k[r], st.v[r], st.pos[r]
            self._sr = None if st.score is None else st.score[r]
            self._slots = {name: t[r] for name, (t, _) in st.slots.items()}
            self._version = st.version
        return self

    _k = property(lambda self: self._views()._kr)
    k = property(lambda self: self._views()._kr[:, :, : self.n])
    v = property(lambda self: self._views()._vr[:, :, : self.n])
    pos = property(lambda self: self._views()._pr[:, :, : self.n])
    score = property(lambda self: None if self.store.score is None else self._views()._sr[:, :, : self.n])

    def append(self, k, v, pos) -> None:
        c = k.shape[2]
        self.store.reserve(self.n + c)
        self._views()
        a, b = self.n, self.n + c
        self._kr[:, :, a:b] = k
        self._vr[:, :, a:b] = v
        self._pr[:, :, a:b] = pos
        if self._sr is not None:
            self._sr[:, :, a:b] = 0
        for name, (_, fill) in self.store.slots.items():
            self._slots[name][:, :, a:b] = fill
        self.n = b

    def slot(self, name: str, fill=0, dtype=torch.float32, trailing: tuple = ()) -> torch.Tensor:
        """A per-slot tensor [1, H_kv, n, *trailing] that moves with its token (created with `fill`,
        for every layer); writes into it stay in the cache."""
        if name not in self.store.slots:
            self.store.add_slot(name, fill, dtype, trailing)
        return self._views()._slots[name][:, :, : self.n]

    def set_slot(self, name: str, t: torch.Tensor) -> None:
        self._views()._slots[name][:, :, : self.n] = t

    @property
    def valid(self) -> torch.Tensor | None:
        """Bool [1, H_kv, n] where heads keep different counts (masked slots hold nothing)."""
        return self.slot("valid") if "valid" in self.store.slots else None

    def kept(self) -> float:
        """Tokens held per head (mean over heads and layers)."""
        valid = self.valid
        return self.n if valid is None else float(valid.sum()) / (valid.shape[0] * valid.shape[1])

    def add_score(self, s: torch.Tensor) -> None:
        """Add a per-token statistic [1, H_kv, n] to the running score (created at zero)."""
        if self.store.score is None:
            self.store.add_score()
        self._views()._sr[:, :, : self.n] += s

    def _tensors(self) -> list[torch.Tensor]:
        self._views()
        return (
            [self._kr, self._vr, self._pr] + ([self._sr] if self._sr is not None else []) + list(self._slots.values())
        )

    def keep(self, idx: torch.Tensor) -> None:
        """Keep the slots idx [1, H_kv, m] (per head; ascending keeps the original order)."""
        m = idx.shape[-1]
        for t in self._tensors():
            ix = idx.view(*idx.shape, *([1] * (t.dim() - 3))).expand(*idx.shape, *t.shape[3:])
            t[:, :, :m] = t[:, :, : self.n].gather(2, ix)
        self.n = m

    def move(self, dst, src: int) -> None:
        """Copy slot src into slot dst of every per-slot tensor: dst an int, or a tensor
        [layers, H_kv] of one slot per layer and head."""
        if isinstance(dst, int):
            for t in self._tensors():
                t[:, :, dst] = t[:, :, src]
            return
        if self._index is None:
            layers, heads = self._views()._kr.shape[:2]
            self._index = (torch.arange(layers, device=dst.device)[:, None], torch.arange(heads, device=dst.device))
        rows, heads = self._index
        for t in self._tensors():
            t[rows, heads, dst] = t[:, :, src]

    def drop_one(self, j) -> None:
        """Evict slot j of every head (an int, or a tensor [layers, H_kv]) by moving the newest slot
        into it (decoding's one-token eviction: a few copies instead of a top-k and a gather; slot
        order stops following positions, which only `pos` carries)."""
        self.move(j, self.n - 1)
        self.n -= 1

    def shift_out(self, s: int) -> None:
        """Evict slot s of every head keeping the order (slots after it move down by one)."""
        n = self.n
        for t in self._tensors():
            t[:, :, s : n - 1] = t[:, :, s + 1 : n].clone()
        self.n = n - 1

    def replace(self, k=None, v=None) -> None:
        """Overwrite the cached keys / values (quantization, merging, re-rotation) in place."""
        if k is not None:
            self._views()._kr[:, :, : self.n] = k
        if v is not None:
            self._views()._vr[:, :, : self.n] = v

    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())


def _grown(t: torch.Tensor, cap: int, n: int) -> torch.Tensor:
    out = t.new_empty(*t.shape[:2], cap, *t.shape[3:])
    out[:, :, :n] = t[:, :, :n]
    return out


def rerotate(k: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys rotated by RoPE at p, re-rotated to p + delta: k' = k cos(δθ) + rotate_half(k) sin(δθ).
    k [b, h, n, d], delta [b, h, n]; uses inv_freq only (no attention scaling, which the key
    already carries)."""
    ang = delta.to(torch.float32).unsqueeze(-1) * inv_freq.to(k.device)
    ang = torch.cat((ang, ang), dim=-1)
    b, h, n, _ = k.shape
    cos, sin = ang.cos().to(k.dtype), ang.sin().to(k.dtype)
    return rotate(k.reshape(b * h, 1, n, -1), cos.reshape(b * h, n, -1), sin.reshape(b * h, n, -1)).reshape(k.shape)


def rerotation_angles(delta: float, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [1, 1, r] of one constant re-rotation by `delta` positions (for `rotate`); the
    angles in float64, so that a large delta loses nothing before cos/sin."""
    ang = float(delta) * inv_freq.double().reshape(1, -1)  # on inv_freq's device
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos().to(dtype)[None], ang.sin().to(dtype)[None]


def effective_inv_freq(rotary) -> torch.Tensor:
    """The frequencies the rotary module applies now (a RoPE-scaling method composed before the kv
    method, e.g. yarn+streaming_llm, may have patched it): the angle at position 1, read back from
    its cos/sin (the attention factor cancels in atan2)."""
    x = rotary.inv_freq.new_zeros(1, 1, 1).float()
    cos, sin = rotary(x, torch.ones(1, 1, dtype=torch.long, device=x.device))
    return torch.atan2(sin, cos)[0, 0, : cos.shape[-1] // 2].float()


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


@dataclass
class KVMethod(LMMethod):
    """Base of the kv family. Subclasses set `compresses` ("prefill", "decode" or "both"),
    `budget_unit` ("tokens": the budget is kept tokens; "bytes": bytes relative to dense;
    "bits": fixed by the method's bit width, the budget is not used), and override the hooks."""

    family: ClassVar[str] = "kv"
    patches: ClassVar[frozenset[str]] = frozenset({"kv_cache"})
    compresses: ClassVar[str] = "prefill"
    budget_unit: ClassVar[str] = "tokens"
    accumulates: ClassVar[bool] = False  # needs attention probabilities (observe)
    all_layers: ClassVar[bool] = False  # compress_decode gets every layer at once (Run.all_layers)
    positions: ClassVar[str] = "original"  # or "cache" (cache-relative, keys re-rotated)
    smoke_args: ClassVar[dict[str, str]] = {"budget": "0.5"}
    budget: float = field(default=0.5, metadata={"help": "kept tokens: <= 1 a fraction of the context, > 1 a count"})

    def __post_init__(self):
        if not self.budget > 0:
            raise ValueError("budget must be positive (a fraction <= 1 or a token count > 1)")

    # -- hooks -------------------------------------------------------------------------------
    def rope_shift(self, run: "Run") -> int:
        """Positions by which the fed tokens' RoPE is advanced beyond the positions they are fed at
        (StreamingLLM: the window shift its cached keys have not been re-rotated by); 0: none."""
        return 0

    def query_window(self) -> int:
        """Queries of the context's end kept per layer for compress_prefill (SnapKV's window)."""
        return 0

    def observe(self, lc: LayerCache, probs: torch.Tensor, logits: torch.Tensor, run: "Run") -> None:
        """Fold one query chunk's attention [1, H_kv, g, c, n] into lc's score (default: H2O's
        accumulated attention, the column sums)."""
        lc.add_score(group_sum(probs))

    def compress_prefill(self, lc: LayerCache, run: "Run") -> None:
        """Compress the prefilled context; lc as in compress_decode."""

    def compress_decode(self, lc: LayerCache, run: "Run") -> None:
        """Back to the budget after a decoding forward; lc is one layer's cache, or every layer's
        ([L, H_kv, n, ...]) when the method sets `all_layers`."""

    def project_kv(self, module, hidden: torch.Tensor, run: "Run"):
        """Key and value projections (before RoPE): [b, c, H_kv*d] each."""
        return module.k_proj(hidden), module.v_proj(hidden)

    def layer_bytes(self, lc: LayerCache, run: "Run") -> float:
        """Bytes this layer's cache would hold (fp16 elements for an uncompressed slot)."""
        return 2 * lc.kept() * lc.k.shape[1] * lc.k.shape[-1] * REFERENCE_BYTES

    def prepare(self, lm) -> None:
        """Called once on apply (e.g. a weight SVD)."""

    # -- the loop ----------------------------------------------------------------------------
    def apply(self, lm, ctx):
        return kv_loop(lm, self)

    def check_effect(self, lm, ctx, result) -> str | None:
        t = lm.telemetry
        if not t["kv.compressed_calls"]:
            return "no prompt went through the compressed KV cache"
        if self.budget_unit == "tokens" and not t["kv.compressed_kept_tokens"] < t["kv.compressed_context_tokens"]:
            return "the cache kept every context token (nothing was evicted)"
        if self.budget_unit != "tokens" and not t["kv.compressed_bytes"] < t["kv.compressed_dense_bytes"]:
            return "the cache holds as many bytes as the dense cache"
        return None


def kept_target(budget: float, n: int) -> int:
    """Tokens kept of n under a budget (fraction <= 1 or count > 1); at least 1."""
    k = round(budget * n) if budget <= 1 else int(budget)
    return max(1, min(n, k))


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
        self.tokens: list[int] = []  # token ids fed so far (FastGen's special / punctuation tokens)
        self.policy_s = 0.0
        self.scaling = 1.0
        self.query_pos: torch.Tensor | None = None  # original positions of the queries `observe` sees
        self.query_start = 0  # query_pos[0], as an int
        self.shift = 0  # method.rope_shift at the start of the current forward
        self._shifted = None  # (the model's cos/sin, the same advanced by `shift`) for this forward
        self.memo: dict = {}  # values a method computes once for all layers (e.g. angles)
        self.clock = time.perf_counter  # the Driver's device_clock: policy timings on a GPU are device time

    def positions(self, c: int) -> torch.Tensor:
        if self.method.positions == "cache" and self.layers:
            start = next(iter(self.layers.values())).n
        else:
            start = self.next_pos
        return torch.arange(start, start + c)

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
        n0, c = lc.n, q.shape[2]
        pos = torch.arange(self.next_pos, self.next_pos + c, device=k.device).expand(*k.shape[:2], c)
        lc.append(k, v, pos)
        stats = self.method.accumulates and not self.dense
        out = self._explicit(lc, q, n0, scaling) if stats else self._sdpa(lc, q, n0, scaling)
        w = self.method.query_window()
        if self.phase == "prefill" and w and not self.dense:
            lc.queries = q[:, :, -w:] if lc.queries is None else torch.cat([lc.queries, q], dim=2)[:, :, -w:]
        if self.compressing_decode() and not self.method.all_layers:
            t0 = self.clock()
            self.method.compress_decode(lc, self)
            self.policy_s += self.clock() - t0
        return out

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

    def _sdpa(self, lc: LayerCache, q, n0: int, scaling: float) -> torch.Tensor:
        c = q.shape[2]
        mask = None
        if c > 1:  # the chunk's queries see the whole cache and the chunk causally
            mask = torch.arange(lc.n, device=q.device)[None, :] <= torch.arange(n0, n0 + c, device=q.device)[:, None]
        if lc.valid is not None:
            v = lc.valid.repeat_interleave(q.shape[1] // lc.k.shape[1], dim=1)[:, :, None, :]
            mask = v if mask is None else mask & v
        return F.scaled_dot_product_attention(
            q, lc.k, lc.v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != lc.k.shape[1]
        )

    def _explicit(self, lc: LayerCache, q, n0: int, scaling: float) -> torch.Tensor:
        b, h, c, d = q.shape
        hkv, n = lc.k.shape[1], lc.n
        g = h // hkv
        keys_t, values = lc.k.transpose(-1, -2), lc.v  # a KV head's query heads share one matmul
        step = max(1, STAT_ELEMENTS // (h * n))
        outs = []
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
            self.query_start = self.next_pos + s
            self.query_pos = torch.arange(self.query_start, self.query_start + cs, device=q.device)
            t0 = self.clock()
            self.method.observe(lc, probs, logits, self)
            self.policy_s += self.clock() - t0
            outs.append((probs.to(values.dtype).view(b, hkv, g * cs, n) @ values).view(b, h, cs, d))
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]

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


class _Engine:
    """Routes the patched attention layers to the Run in progress (None: the model's own forward)."""

    run: Run | None = None


def _attention_forward(engine: _Engine, method: KVMethod, m):
    cls_forward = type(m).forward

    def forward(
        hidden_states,
        position_embeddings=None,
        attention_mask=None,
        past_key_values=None,
        cache_position=None,
        **kwargs,
    ):
        run = engine.run
        if run is None:
            return cls_forward(
                m, hidden_states, position_embeddings, attention_mask, past_key_values, cache_position, **kwargs
            )
        b, c = hidden_states.shape[:2]
        shape = (b, c, -1, m.head_dim)
        q = m.q_proj(hidden_states).view(shape).transpose(1, 2)
        k, v = method.project_kv(m, hidden_states, run)
        k, v = k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)
        cos, sin = run.shifted_rope(position_embeddings) if run.shift else position_embeddings
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = run.attend(m.layer_idx, q, k, v, m.scaling)
        return m.o_proj(out.transpose(1, 2).reshape(b, c, -1)), None

    return forward


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    p = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = p.sort(descending=True)
        drop = sorted_p.cumsum(0) - sorted_p > top_p
        p = p.clone()
        p[order[drop]] = 0
        p = p / p.sum()
    return int(torch.multinomial(p, 1, generator=gen))


class Driver:
    """The manual loop (prefill, compress, decode) for one LM and one kv method."""

    def __init__(self, lm, method: KVMethod):
        self.lm, self.method, self.engine = lm, method, _Engine()
        self.rotary = _rotary_module(lm.model)
        # rows of the shared cache, in layer order: hybrid models number only some layers' attention
        self.rows = {i: r for r, i in enumerate(sorted({m.layer_idx for m in _attention_modules(lm.model)}))} or {0: 0}
        self.clock = device_clock(lm.device)
        self.generator = torch.Generator().manual_seed(0)
        # leading tokens kept in full precision and never evicted (set by modifiers such as intactkv)
        self.protect_prefix = 0

    def _forward(self, run: Run, ids: list[int], all_logits: bool) -> torch.Tensor:
        dev = self.lm.device
        pos = run.positions(len(ids)).to(dev)
        run.shift = self.method.rope_shift(run) if not run.dense else 0
        run.tokens += ids
        out = self.lm.model(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=pos[None],
            use_cache=False,
            logits_to_keep=0 if all_logits else 1,
        )
        run.next_pos += len(ids)
        return out.logits[0]

    def budget(self) -> float:
        """The task's budget for these calls (LM.kv_request), else the method's own."""
        asked = self.lm.kv_request.budget
        return self.method.budget if asked is None else asked

    def start(self) -> Run:
        budget = float(self.budget())
        protect = int(self.protect_prefix)
        run = Run(self.method, budget, self.generator, effective_inv_freq(self.rotary), protect, self.rows)
        run.tokenizer = self.lm.tokenizer
        run.clock = self.clock
        return run

    def prefill_forward(self, run: Run, ids: list[int], all_logits: bool) -> tuple[torch.Tensor, int]:
        """Prefill in chunks, then compress; returns (logits, cache bytes held before compressing)."""
        self.engine.run = run
        try:
            outs = [
                self._forward(run, ids[s : s + PREFILL_CHUNK], all_logits) for s in range(0, len(ids), PREFILL_CHUNK)
            ]
            peak = run.held_bytes()
            run.compress_prefill()
        finally:
            self.engine.run = None
        return (torch.cat(outs) if all_logits else outs[-1]), peak

    def decode_forward(self, run: Run, ids: list[int]) -> torch.Tensor:
        self.engine.run = run
        try:
            out = self._forward(run, ids, True)
            run.compress_decode_all()
            return out
        finally:
            self.engine.run = None

    @torch.no_grad()
    def prefill(self, run: Run, ids: list[int], all_logits: bool) -> torch.Tensor:
        """Prefill the context and compress it (recorded in telemetry); its logits (all or the last)."""
        t0 = self.clock()
        run.n_context = len(ids)
        logits, peak = self.prefill_forward(run, ids, all_logits)
        run.phase, run.policy_s = "decode", 0.0  # bookkeeping is reported for decoding only
        t = self.lm.telemetry
        n, kept, nbytes, dense = len(ids), run.kept_tokens(), run.bytes(), run.dense_bytes()
        t["kv.calls"] += 1
        t["kv.context_tokens"] += n
        t["kv.kept_tokens"] += kept
        t["kv.bytes"] += nbytes
        t["kv.dense_bytes"] += dense
        if not run.dense:
            t["kv.compressed_calls"] += 1
            t["kv.compressed_context_tokens"] += n
            t["kv.compressed_kept_tokens"] += kept
            t["kv.compressed_bytes"] += nbytes
            t["kv.compressed_dense_bytes"] += dense
        t["kv.peak_cache_bytes"] = max(t["kv.peak_cache_bytes"], peak)
        if run.protect and not run.dense and self.method.budget_unit == "bits":  # quantizers honour it
            t["kv.protected_tokens"] += min(run.protect, n)
        t["kv.prefill_s"] += self.clock() - t0
        return logits

    @torch.no_grad()
    def decode(self, run: Run, ids: list[int]) -> torch.Tensor:
        """Feed tokens after the compressed context (compressing as the method does); all logits."""
        t0 = self.clock()
        out = self.decode_forward(run, ids)
        run.step += 1
        t = self.lm.telemetry
        t["kv.decode_s"] += self.clock() - t0
        t["kv.decode_steps"] += 1
        t["kv.policy_s"] += run.policy_s
        run.policy_s = 0.0
        t["kv.peak_cache_bytes"] = max(t["kv.peak_cache_bytes"], run.held_bytes())
        return out

    def generate_one(self, prompt: list[int], max_new: int, temperature: float, top_p: float) -> list[int]:
        question = int(self.lm.kv_request.question_tokens)
        if not 0 <= question < len(prompt):
            raise UserError(f"kv: {question} question tokens leave no context in a {len(prompt)}-token prompt")
        run = self.start()
        cut = len(prompt) - question
        run.max_new = question + max_new
        logits = self.prefill(run, prompt[:cut], all_logits=False)[-1]
        if question:
            logits = self.decode(run, prompt[cut:])[-1]
        eos, new = self.lm.tokenizer.eos_token_id, []
        while len(new) < max_new:
            new.append(_sample(logits, temperature, top_p, self.generator))
            if new[-1] == eos or len(new) == max_new:
                break
            logits = self.decode(run, new[-1:])[-1]
        return new

    def score_one(self, seq: list[int]) -> torch.Tensor:
        asked = self.lm.kv_request.decode_tokens
        n_dec = len(seq) // 2 if asked is None else int(asked)
        n_dec = max(0, min(n_dec, len(seq) - 1))
        run = self.start()
        cut = len(seq) - n_dec
        run.max_new = n_dec
        logits = [self.prefill(run, seq[:cut], all_logits=True)]
        for tok in seq[cut:]:
            logits.append(self.decode(run, [tok]))
        return torch.cat(logits)


@contextlib.contextmanager
def kv_loop(lm, method: KVMethod, driver: Driver | None = None):
    """Route the LM's batch hooks through the driver and (for this module's engine) patch the
    attention layers; both restored on exit."""
    if lm.kv_policy is not None:
        raise UserError(
            f"{method.name}: the KV cache is already managed by {lm.kv_policy.method.name}; "
            f"compose one kv cache policy (modifiers such as intactkv go after it: kivi+intactkv)"
        )
    patch = driver is None
    driver = driver or Driver(lm, method)
    method.prepare(lm)
    modules = _attention_modules(lm.model) if patch else []
    if patch and not modules:
        raise UserError(f"{method.name}: no Llama-style attention layers (q_proj/k_proj/v_proj/o_proj) found")

    @torch.no_grad()
    def generate_batch(ids, mask, max_new_tokens, temperature, top_p):
        rows = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            prompt = [t for t, keep in zip(row, m) if keep]
            rows.append(driver.generate_one(prompt, max_new_tokens, temperature, top_p))
        width = max(1, max(map(len, rows)))
        pad = lm.tokenizer.pad_token_id
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

    @torch.no_grad()
    def forward_logits(ids, mask):
        out = None
        for b, (row, m) in enumerate(zip(ids.tolist(), mask.tolist())):
            seq = [t for t, keep in zip(row, m) if keep]  # right padding (LM.loglikelihood)
            logits = driver.score_one(seq)
            if out is None:
                out = logits.new_zeros(ids.shape[0], ids.shape[1], logits.shape[-1])
            out[b, : len(seq)] = logits
        return out

    lm.kv_policy = driver
    try:
        with (
            lm.batch_hooks(generate_batch=generate_batch, forward_logits=forward_logits),
            patched_forwards(modules, lambda m: _attention_forward(driver.engine, method, m), lm.telemetry, PATCHED),
        ):
            yield driver
    finally:
        lm.kv_policy = None


def quantize(x: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Asymmetric min-max fake quantization along `dim` (KIVI/GEAR): s = (max - min)/(2^B - 1),
    q = round((x - min)/s) clamped to [0, 2^B - 1], x̂ = q s + min. Groups are the other axes."""
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((x - lo) / safe), 0, levels)
    return torch.where(scale > 0, q * scale + lo, lo)


def quantize_groups(x: torch.Tensor, bits: int, group: int, axis: str) -> torch.Tensor:
    """Fake-quantize x [b, h, n, d] in groups of `group` elements: axis "token" = per-channel
    (groups of consecutive tokens of one channel: KIVI's keys), "channel" = per-token (groups of
    consecutive channels of one token: KIVI's values). The grouped length must divide evenly."""
    b, h, n, d = x.shape
    if axis == "token":
        if n % group:
            raise ValueError(f"{n} tokens do not split into groups of {group}")
        return quantize(x.reshape(b, h, n // group, group, d), bits, dim=3).reshape(b, h, n, d)
    if d % group:
        raise ValueError(f"head_dim {d} does not split into groups of {group}")
    return quantize(x.reshape(b, h, n, d // group, group), bits, dim=4).reshape(b, h, n, d)


def quant_bytes(elements: int, bits: int, group: int) -> float:
    """Bytes of `elements` quantized values at `bits` plus one fp16 scale and zero point per group."""
    return elements * bits / 8 + (elements / group) * 2 * REFERENCE_BYTES
