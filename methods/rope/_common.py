"""Shared RoPE math of the long-context family and the one patch point they all use.

Every method here is a function seq_len -> (inv_freq, attention_scaling). `rope_override` swaps
the forward of each rotary-embedding module of the model for one that evaluates that function
at each row's own length (its maximum position + 1, which is what dynamic variants need: never the
longest row of a padded batch, so a row's numbers do not depend on what shares its batch) and
restores the original forward on exit. cos and sin are multiplied by attention_scaling, as in transformers,
so attention logits are scaled by its square."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch

from harness.patching import patched_forwards


@dataclass(frozen=True)
class RopeShape:
    base: float  # rope_theta
    dim: int  # rotary dimensions (head_dim x partial_rotary_factor)
    original_max: int  # pretraining context length L


def rope_shape(config) -> RopeShape:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    base = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if base is None:
        raise ValueError("model config has no rope_theta: this is not a RoPE model")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
    original = rope.get("original_max_position_embeddings") or config.max_position_embeddings
    return RopeShape(float(base), dim, int(original))


def inv_freq(base: float, dim: int) -> torch.Tensor:
    """theta_i = base^(-2i/d), i = 0 .. d/2-1 (float32, as in transformers)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def scale_factor(explicit: float | None, target_length: int | None, original_max: int) -> float:
    """The explicit factor, else target / original length (never below 1: no compression)."""
    if explicit is not None:
        return float(explicit)
    if not target_length:
        return 1.0
    return max(1.0, target_length / original_max)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's temperature term sqrt(1/t) = 0.1 ln(s) + 1 (1 for s <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_range(
    beta_fast: float, beta_slow: float, shape: RopeShape, original_max: int, truncate: bool = True
) -> tuple[float, float]:
    """Dimensions where the wavelength completes beta_fast / beta_slow rotations within L."""

    def dim_of(rotations: float) -> float:
        return shape.dim * math.log(original_max / (rotations * 2 * math.pi)) / (2 * math.log(shape.base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, shape.dim - 1)


def linear_ramp(low: float, high: float, n: int) -> torch.Tensor:
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    return torch.clamp((torch.arange(n, dtype=torch.float32) - low) / (high - low), 0, 1)


FreqFn = Callable[[int], tuple[torch.Tensor, float]]


def row_lengths(position_ids: torch.Tensor, lm=None) -> list[int]:
    """Each row's sequence length for a length-dependent rule: its largest position + 1, or, while
    the LM prefills the row's prompt in chunks, the whole prompt's (`LM.prefill_length`, per row)."""
    own = (position_ids.max(dim=-1).values + 1).tolist()
    whole = lm.prefill_length if lm is not None else None
    if whole is None:
        return own
    return [max(a, int(b)) for a, b in zip(own, whole)]


ROPE_CALLS = "patched_calls.rope"  # telemetry key: calls of the patched rotary embedding


def _rotary_modules(model):
    return [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]


@contextlib.contextmanager
def rope_override(model, freq_fn: FreqFn, keep_first: tuple[int, torch.Tensor] | None = None, counter=None, lm=None):
    """Route every rotary embedding of `model` through `freq_fn(seq_len)`; restore on exit.
    keep_first=(n, inv_freq): positions below n rotate with inv_freq instead (LongRoPE's
    un-interpolated start tokens). counter: telemetry that counts the patched calls. lm: while it
    prefills a prompt in chunks, seq_len is the whole prompt's length (`lm.prefill_length`), so a
    length-dependent rule (dynamic NTK, LongRoPE's short/long factors) rotates every chunk as one
    forward over the whole prompt would."""
    modules = _rotary_modules(model)
    if not modules:
        raise ValueError("the model has no rotary embedding module: RoPE methods need a RoPE model")
    cache: dict[int, tuple[torch.Tensor, float]] = {}

    def cos_sin(x, position_ids, seq_len: int):
        if seq_len not in cache:
            cache[seq_len] = freq_fn(seq_len)
        inv, scaling = cache[seq_len]
        inv = inv.to(x.device)[None, :, None].expand(position_ids.shape[0], -1, 1)
        freqs = (inv @ position_ids[:, None, :].float()).transpose(1, 2)
        if keep_first and keep_first[0] > 0:
            first = keep_first[1].to(x.device)[None, :, None].expand(position_ids.shape[0], -1, 1)
            first = (first @ position_ids[:, None, :].float()).transpose(1, 2)
            freqs = torch.where((position_ids < keep_first[0])[..., None], first, freqs)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)

    def make_forward(module):
        @torch.no_grad()
        def forward(x, position_ids):
            lengths = row_lengths(position_ids, lm)
            if len(set(lengths)) == 1:
                return cos_sin(x, position_ids, lengths[0])
            parts = [None] * len(lengths)
            for n in set(lengths):  # rows of one length share one evaluation of the rule
                rows = [b for b, m in enumerate(lengths) if m == n]
                cos, sin = cos_sin(x, position_ids[rows], n)
                for i, b in enumerate(rows):
                    parts[b] = (cos[i], sin[i])
            return torch.stack([c for c, _ in parts]), torch.stack([s for _, s in parts])

        return forward

    with patched_forwards(modules, make_forward, counter, ROPE_CALLS):
        yield


class RopeMethod:
    """Mixin for RoPE methods: subclasses define `freq_fn(shape, s)` for the resolved scale s.

    `factor_field` names the field holding the scale (None there = derived from the task's
    longest context and the model's original one)."""

    family = "rope"
    patches = frozenset({"rope"})
    factor_field = "factor"

    def freq_fn(self, shape: RopeShape, s: float) -> FreqFn:
        raise TypeError(f"{type(self).__name__} must define freq_fn")

    def original_max(self, shape: RopeShape) -> int:
        return shape.original_max

    def resolve(self, lm, ctx) -> tuple[RopeShape, float]:
        try:
            shape = rope_shape(lm.model.config)
        except ValueError as e:
            from harness.errors import UserError

            raise UserError(f"method {self.name}: {e}") from None
        shape = RopeShape(shape.base, shape.dim, self.original_max(shape))
        return shape, scale_factor(getattr(self, self.factor_field), ctx.target_length, shape.original_max)

    def resolved(self, lm, ctx) -> dict:
        shape, s = self.resolve(lm, ctx)
        return {
            "scale": s,
            "original_max_position_embeddings": shape.original_max,
            "rope_theta": shape.base,
            "rotary_dim": shape.dim,
        }

    def apply(self, lm, ctx):
        shape, s = self.resolve(lm, ctx)
        return rope_override(lm.model, self.freq_fn(shape, s), counter=lm.telemetry, lm=lm)

    def check_effect(self, lm, ctx, result) -> str | None:
        """The patched rotary embedding ran, and at a scale above 1 its frequencies (or attention
        scale) differ from the model's own at the task's longest context."""
        if lm.telemetry[ROPE_CALLS] == 0:
            return "the patched rotary embedding was never called"
        shape, s = self.resolve(lm, ctx)
        if s > 1 and ctx.target_length:
            inv, scaling = self.freq_fn(shape, s)(ctx.target_length)
            if scaling == 1.0 and torch.allclose(inv, inv_freq(shape.base, shape.dim)):
                return f"scale {s:g} left the RoPE frequencies unchanged at {ctx.target_length} tokens"
        return None
