from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

from harness import params, registry
from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register


@register
@dataclass
class IntactKV(LMMethod):
    """IntactKV — Liu et al. 2024, "IntactKV: Improving Large Language Model Quantization by
    Keeping Pivot Tokens Intact" (arXiv:2403.01241, ACL 2024); rule from ruikangliu/IntactKV
    `intactkv/inference_model.py`.

    The KV of the prompt prefix holding the pivot tokens ([BOS], IntactKV_[B]; or the system
    prompt, IntactKV_[P]) is kept lossless while the rest of the cache is quantized. Two uses:
    a modifier after a quantizing kv method (`kivi+intactkv`, `gear+intactkv`: that method leaves
    the first `pivot_tokens` tokens out of quantization), or alone, wrapping `quantizer` (KIVI
    by default, at its defaults). Only the KV cache is quantized here, so the full-precision
    prefix the paper generates is the cache's own. pivot_tokens: None = the tokenizer's prompt
    prefix ([BOS]), or the first token when it adds none (the attention sink of such models)
    [our choice for BOS-less tokenizers]. Training-free ([B]/[P])."""

    name = "intactkv"
    ranges = {"pivot_tokens": "[0, inf)"}  # checked by params.build before any model loads
    family: ClassVar[str] = "kv"
    paper = "IntactKV: Improving Large Language Model Quantization by Keeping Pivot Tokens Intact (arXiv:2403.01241)"
    patches: ClassVar[frozenset[str]] = frozenset({"kv_pivot"})
    budget_unit: ClassVar[str] = "bits"
    smoke_args: ClassVar[dict[str, str]] = {}
    pivot_tokens: int | None = field(default=None, metadata={"help": "lossless prefix tokens; None = [BOS] (or 1)"})
    quantizer: str = field(default="kivi", metadata={"help": "quantizing kv method used when intactkv runs alone"})

    def __post_init__(self):
        if self.pivot_tokens is not None and self.pivot_tokens < 1:
            raise ValueError("pivot_tokens must be positive")

    def pivots(self, lm) -> int:
        return self.pivot_tokens or max(1, len(lm.prompt_prefix()))

    def resolved(self, lm, ctx) -> dict:
        return {"pivot_tokens": self.pivots(lm)} if lm is not None else {}

    @contextlib.contextmanager
    def apply(self, lm, ctx):
        with contextlib.ExitStack() as stack:
            if lm.kv_policy is None:  # alone: bring the quantizer
                inner = params.build(registry.method(self.quantizer), {}, f"intactkv quantizer {self.quantizer}")
                if inner.budget_unit != "bits":
                    raise UserError(
                        f"intactkv: quantizer {self.quantizer!r} is not a quantizing kv method (kivi, gear)"
                    )
                stack.enter_context(inner.apply(lm, ctx))
            policy = lm.kv_policy
            saved, policy.protect_prefix = policy.protect_prefix, self.pivots(lm)
            try:
                yield policy
            finally:
                policy.protect_prefix = saved

    def check_effect(self, lm, ctx, result) -> str | None:
        if not lm.telemetry["kv.protected_tokens"]:
            return (
                "no quantizing kv method kept the pivot prefix lossless (run it alone, or after a "
                "quantizer: kivi+intactkv)"
            )
        return None
