from __future__ import annotations

from dataclasses import dataclass

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.spec._common import CachedModel, decoding_loop, probs


@register
@dataclass
class Autoregressive(LMMethod):
    """Plain autoregressive decoding through the same cached loop the speculative methods use:
    one target forward per new token (τ = 1), the baseline speculative methods are timed against."""

    name = "autoregressive"
    family = "spec"
    paper = "baseline of Fast Inference from Transformers via Speculative Decoding (arXiv:2211.17192)"
    patches = frozenset({"decoding"})

    def apply(self, lm, ctx):
        eos = lm.tokenizer.eos_token_id

        def generate_one(prompt, max_new, temperature, gen):
            target, out = CachedModel(lm.model), []
            logits = target.step(prompt)[-1]
            lm.telemetry["target_forwards"] += 1
            while True:
                token = int(probs(logits, temperature).multinomial(1, generator=gen))
                out.append(token)
                if len(out) >= max_new or token == eos:
                    return out
                logits = target.step([token])[-1]
                lm.telemetry["target_forwards"] += 1

        return decoding_loop(lm, generate_one)

    def check_effect(self, lm, ctx, result):
        return None if lm.telemetry["target_forwards"] else "the cached decoding loop never ran"
