from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register
from harness.attention import AttentionInputs, AttentionMethod, attention_override, banded_attend, rotate
from harness.methods.rope._common import rope_shape


@register
@dataclass
class SelfExtend(AttentionMethod, LMMethod):
    """SelfExtend — Jin et al. 2024, "LLM Maybe LongLM: Self-Extend LLM Context Window Without
    Tuning" (arXiv:2401.01325); rule from datamllab/LongLM `self_extend_patch/Llama.py`.

    Two rotations of every query-key pair: neighbour positions (the usual ones) and grouped
    positions — key ⌊p_k/G⌋, query ⌊p_q/G⌋ + W − ⌊W/G⌋. A pair at relative distance < W uses
    the neighbour logit, otherwise the grouped one; both enter one softmax (computed as fused
    partials, each pair in exactly one, merged by their log-sum-exp; see `banded_attend`). Keys
    are cached before rotation, so decoding with the KV cache is exact.

    group_size: G; None = the smallest G with W + (N − W)/G ≤ L/2 for the task's longest context
    N and the model's original L (the lower end of the paper's rule ½L…⅔L > W + (N − W)/G).
    window_size: W; None = L/4 (1024 for a 4k Llama-2, inside the README's 512–1536 range).
    """

    name = "selfextend"
    family = "rope"
    paper = "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning (arXiv:2401.01325)"
    patches = frozenset({"attention", "kv_cache"})
    ranges = {"group_size": "[1, inf)", "window_size": "[1, inf)"}  # checked by params.build before any model loads
    group_size: int | None = field(default=None, metadata={"help": "G; None = derived from the task length"})
    window_size: int | None = field(default=None, metadata={"help": "W (neighbour window); None = L/4"})

    def __post_init__(self):
        if (self.group_size is not None and self.group_size < 1) or (
            self.window_size is not None and self.window_size < 1
        ):
            raise ValueError("group_size and window_size must be positive")

    def sizes(self, lm, ctx) -> tuple[int, int]:
        try:
            L = rope_shape(lm.model.config).original_max
        except ValueError as e:
            raise UserError(f"method selfextend: {e}") from None
        W = self.window_size or max(1, L // 4)
        if self.group_size:
            return self.group_size, W
        N = ctx.target_length or L
        if N <= L:
            return 1, W
        if L // 2 <= W:
            raise UserError(f"selfextend: window_size {W} leaves no room for groups within L/2 = {L // 2}")
        return max(1, math.ceil((N - W) / (L // 2 - W))), W

    def resolved(self, lm, ctx) -> dict:
        G, W = self.sizes(lm, ctx)
        return {"group_size": G, "window_size": W}

    def apply(self, lm, ctx):
        G, W = self.sizes(lm, ctx)
        return attention_override(lm.model, lambda a: self.attend(a, G, W), counter=lm.telemetry)

    @staticmethod
    def attend(a: AttentionInputs, G: int, W: int) -> torch.Tensor:
        def queries(r, q, qp):  # 0 neighbour positions, 1 grouped ones
            return rotate(q, *a.rope(qp if r == 0 else qp // G + W - W // G))

        return banded_attend(a, lambda qp, kp: (qp - kp >= W).long(), queries, lambda r, kp: kp if r == 0 else kp // G)
