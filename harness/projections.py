"""One attention layer's projections, whatever the family lays them out as: the raw queries, keys
and values [b, heads, L, head_dim] before RoPE (with the family's query/key norms applied) and the
output projection. The attention override (harness.attention) and the kv engine compute their
attention between these, through the model's own modules, so that a patched layer with the model's
own positions computes what the model computes.

Layouts (each read off the installed transformers modeling files):
- "separate": q_proj / k_proj / v_proj, output o_proj (Llama, Qwen2/3, Mistral, Gemma, OLMo2, ...)
  or dense (Phi);
- "qkv_proj": one Linear whose rows are [all query heads | all key heads | all value heads] (Phi-3);
- "per_head": one Linear `query_key_value` viewed as [heads, 3, head_dim] (GPT-NeoX, Persimmon;
  Falcon without new_decoder_architecture or multi_query), output dense;
- "falcon_grouped": `query_key_value` viewed as [kv_heads, heads/kv_heads + 2, head_dim]: a group's
  queries, then its key and its value (Falcon's new_decoder_architecture);
- "multi_query": `query_key_value` viewed as [heads + 2, head_dim]: the queries, one key, one value
  (Falcon multi_query).
Query/key norms (q_norm/k_norm, q_layernorm/k_layernorm) act per head when their weight has
head_dim entries (Qwen3, Phi, Persimmon, Gemma3) and on the whole projection when it has
heads x head_dim (OLMo2), always before RoPE, as in those families. Anything else in an attention layer (a gated
query, per-head sink logits, a norm after RoPE, a latent projection) is not guessed at: `layout_refusal`
names it and the methods that replace attention are refused on that model."""

from __future__ import annotations

import weakref

import torch

SEPARATE = ("q_proj", "k_proj", "v_proj")
OUTPUTS = ("o_proj", "dense")
FUSED = ("qkv_proj", "query_key_value")
NORMS = {"q": ("q_norm", "q_layernorm"), "k": ("k_norm", "k_layernorm")}
KNOWN = {*SEPARATE, *OUTPUTS, *FUSED, *NORMS["q"], *NORMS["k"]}
# a fused projection's row order is the family's convention, not visible in the weights: only the
# classes whose layout was read off transformers' code (and tested against it) are split
FUSED_VERIFIED = {"Phi3Attention", "GPTNeoXAttention", "FalconAttention", "PersimmonAttention"}


class LayoutError(ValueError):
    """An attention layer whose projections this module does not know (the message says why)."""


def _linear_out(m) -> int:
    w = getattr(m, "weight", None)
    if w is None or w.dim() != 2:
        raise LayoutError(f"{type(m).__name__} is not a linear layer")
    return w.shape[0]


class Projections:
    """The adapter for one attention module `m` (see the module docstring)."""

    def __init__(self, m):
        cfg = m.config
        self._module, self.name = weakref.ref(m), type(m).__name__  # (the cache must not keep m alive)
        self.heads = int(getattr(m, "num_heads", None) or cfg.num_attention_heads)
        self.head_dim = int(
            getattr(m, "head_dim", None) or getattr(m, "head_size", None) or cfg.hidden_size // self.heads
        )
        children = dict(m.named_children())
        extra = sorted(
            n
            for n, c in children.items()
            if n not in KNOWN and not isinstance(c, torch.nn.Dropout) and not hasattr(c, "inv_freq")
        )
        if extra:
            raise LayoutError(f"{self.name} has submodules the override does not know ({', '.join(extra)})")
        own = sorted(n for n, _ in m.named_parameters(recurse=False))
        if own:
            raise LayoutError(f"{self.name} has parameters outside its projections ({', '.join(own)})")
        out = [n for n in OUTPUTS if n in children]
        if len(out) != 1:
            raise LayoutError(f"{self.name} has no single output projection (o_proj or dense)")
        self.out_name = out[0]
        hd, h = self.head_dim, self.heads
        if all(n in children for n in SEPARATE):
            self.layout = "separate"
            self.kv_heads = _linear_out(m.k_proj) // hd
            q_out, v_out = _linear_out(m.q_proj), _linear_out(m.v_proj)
            if q_out != h * hd:
                raise LayoutError(
                    f"{self.name}'s q_proj gives {q_out} features, not heads x head_dim = {h * hd} "
                    f"(a gated or otherwise extended query)"
                )
            if v_out != self.kv_heads * hd or _linear_out(m.k_proj) != self.kv_heads * hd:
                raise LayoutError(f"{self.name}'s k_proj and v_proj give different or partial heads")
        elif "qkv_proj" in children:
            self.layout, self.fused_name = "qkv_proj", "qkv_proj"
            self.kv_heads = int(getattr(m, "num_key_value_heads", None) or cfg.num_key_value_heads)
        elif "query_key_value" in children:
            self.fused_name = "query_key_value"
            if getattr(m, "new_decoder_architecture", False):
                self.layout, self.kv_heads = "falcon_grouped", int(m.num_kv_heads)
            elif getattr(m, "multi_query", False):
                self.layout, self.kv_heads = "multi_query", 1
            else:
                self.layout, self.kv_heads = "per_head", h
        else:
            raise LayoutError(f"{self.name} has no q_proj/k_proj/v_proj, qkv_proj or query_key_value projection")
        if self.layout != "separate":
            if self.name not in FUSED_VERIFIED:
                raise LayoutError(
                    f"{self.name} has a fused {self.fused_name} whose layout the override does not know "
                    f"(known: {', '.join(sorted(FUSED_VERIFIED))})"
                )
            expected = (h + 2 * self.kv_heads) * hd
            if _linear_out(getattr(m, self.fused_name)) != expected:
                raise LayoutError(
                    f"{self.name}'s fused projection gives {_linear_out(getattr(m, self.fused_name))} features, not "
                    f"(heads + 2 x kv_heads) x head_dim = {expected}"
                )
        if h % self.kv_heads:
            raise LayoutError(f"{self.name} has {h} query heads for {self.kv_heads} key/value heads")
        self.norms = {}  # "q"/"k" -> (module name, "head" or "flat")
        for which, names in NORMS.items():
            found = [n for n in names if n in children]
            if not found:
                continue
            if len(found) > 1:
                raise LayoutError(f"{self.name} has query/key norms the override does not know ({', '.join(found)})")
            weight = getattr(children[found[0]], "weight", None)
            width = (h if which == "q" else self.kv_heads) * hd
            if weight is not None and tuple(weight.shape) == (hd,):
                self.norms[which] = (found[0], "head")
            elif weight is not None and tuple(weight.shape) == (width,) and width != hd:
                self.norms[which] = (found[0], "flat")
            else:
                shape = None if weight is None else tuple(weight.shape)
                raise LayoutError(
                    f"{self.name}'s {found[0]} has weight shape {shape}, neither head_dim ({hd},) nor the "
                    f"whole projection ({width},)"
                )
        self.scaling = float(getattr(m, "scaling", None) or getattr(m, "inv_norm_factor", None) or hd**-0.5)
        self._last = None  # (input, fused output): q() and kv() of one input share one matmul

    @property
    def module(self):
        return self._module()

    @property
    def out_proj(self):
        return getattr(self.module, self.out_name)

    # -- projections --------------------------------------------------------------------------
    def _fused_out(self, hidden: torch.Tensor) -> torch.Tensor:
        last = self._last
        if last is not None and last[0] is hidden:
            self._last = None
            return last[1]
        out = getattr(self.module, self.fused_name)(hidden)
        self._last = (hidden, out)
        return out

    def _split(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n = f.shape[:2]
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        if self.layout == "qkv_proj":
            return f[..., : h * d], f[..., h * d : (h + kv) * d], f[..., (h + kv) * d :]
        if self.layout == "per_head":
            x = f.view(b, n, h, 3, d)
            return tuple(x[..., i, :].reshape(b, n, h * d) for i in range(3))
        if self.layout == "falcon_grouped":
            x = f.view(b, n, kv, h // kv + 2, d)
            return (
                x[..., :-2, :].reshape(b, n, h * d),
                x[..., -2, :].reshape(b, n, kv * d),
                x[..., -1, :].reshape(b, n, kv * d),
            )
        x = f.view(b, n, h + 2, d)  # multi_query
        return x[..., :h, :].reshape(b, n, h * d), x[..., h, :], x[..., h + 1, :]

    def q(self, hidden: torch.Tensor) -> torch.Tensor:
        """The query projection [b, L, heads x head_dim] (before norms and RoPE)."""
        if self.layout == "separate":
            return self.module.q_proj(hidden)
        return self._split(self._fused_out(hidden))[0]

    def kv(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value projections [b, L, kv_heads x head_dim] each (before norms and RoPE)."""
        if self.layout == "separate":
            return self.module.k_proj(hidden), self.module.v_proj(hidden)
        return self._split(self._fused_out(hidden))[1:]

    def heads_of(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projection outputs -> [b, heads, L, head_dim] queries and [b, kv_heads, L, head_dim] keys and
        values, with the family's query/key norms applied (not rotated)."""
        b, n = q.shape[:2]
        out = []
        for which, x in (("q", q), ("k", k), ("v", v)):
            name, kind = self.norms.get(which, (None, None))
            norm = getattr(self.module, name) if name else None
            if kind == "flat":
                x = norm(x)
            x = x.reshape(b, n, -1, self.head_dim).transpose(1, 2)
            if kind == "head":
                x = norm(x)
            out.append(x)
        return tuple(out)

    def project(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [b, h, L, d] of hidden states, normed where the family norms them."""
        return self.heads_of(self.q(hidden), *self.kv(hidden))

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """Attention output [b, heads, L, head_dim] -> the layer's output [b, L, hidden]."""
        b, _, n, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(b, n, -1))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def projections(m) -> Projections:
    """The (cached) adapter of attention module m; LayoutError when its layout is not known."""
    p = _CACHE.get(m)
    if p is None:
        p = _CACHE[m] = Projections(m)
    return p


def attention_modules(model) -> list:
    """The model's attention layers: modules with a layer index and a projection this module could
    read (adapted or not: `layout_refusal` says whether they can be)."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "layer_idx") and (any(hasattr(m, n) for n in FUSED) or all(hasattr(m, n) for n in SEPARATE))
    ]


def layout_refusal(model) -> str | None:
    """Why the attention layers of `model` cannot be adapted (None: every one can)."""
    mods = attention_modules(model)
    layers = getattr(model.config, "num_hidden_layers", None)
    if not mods:
        return "no attention layers with q_proj/k_proj/v_proj, qkv_proj or query_key_value projections found"
    from harness.cla import reusing_layers  # Cross-Layer Attention: reusers have no K/V projections

    if layers is not None and len(mods) + len(reusing_layers(model)) != layers:
        return f"{len(mods)} attention layers found for {layers} decoder layers (a hybrid or cross-attention stack)"
    for m in mods:
        try:
            projections(m)
        except LayoutError as e:
            return str(e)
    return None
