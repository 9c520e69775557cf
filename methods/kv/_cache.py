"""The cache of the kv engine: one storage per per-slot tensor for every layer of a Run
(`SlotStore`, grown by doubling, so a decoding step appends in place) and each layer's view of it
(`LayerCache`: append, keep, move, drop_one, shift_out evict in place: nothing is concatenated per
step). Bytes are counted at REFERENCE_BYTES per element, as the papers' fp16 caches hold them."""

from __future__ import annotations

import torch

REFERENCE_BYTES = 2  # fp16


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
