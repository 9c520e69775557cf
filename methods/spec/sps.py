from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.spec._common import (
    CachedModel,
    append_accepted,
    count_step,
    decoding_loop,
    load_draft,
    probs,
    verify_chain,
    verify_greedy,
)


@register
@dataclass
class SpS(LMMethod):
    """Speculative sampling — Leviathan et al. 2023, "Fast Inference from Transformers via
    Speculative Decoding" (arXiv:2211.17192); Chen et al. 2023 (arXiv:2302.01318).

    The draft proposes γ tokens; the target scores them in one forward; draft token i is accepted
    with probability min(1, p_i/q_i), the first rejection is replaced by a sample of
    norm(max(0, p_i − q_i)), and a bonus token is drawn from p when all γ pass. The output is
    distributed exactly as the target's; at temperature 0 it is the target's greedy output.

    draft: the draft model (same tokenizer). gamma: draft tokens per step (4, as in Chen et al.).
    """

    name = "sps"
    family = "spec"
    paper = "Fast Inference from Transformers via Speculative Decoding (arXiv:2211.17192)"
    patches = frozenset({"decoding"})
    smoke_args = {"draft": "{model}"}  # the matrix test drafts with the model under test
    ranges = {"gamma": "[1, inf)"}  # checked by params.build before any model loads
    model_params = ("draft",)
    draft: str = field(default="zoo:tiny-llama-draft", metadata={"help": "draft model (same tokenizer)"})
    gamma: int = 4

    def draft_length(self) -> int:
        return self.gamma

    def __post_init__(self):
        if self.gamma < 1:
            raise ValueError("gamma must be at least 1")

    def drafter(self, lm):
        """The draft model (DistillSpec overrides this with its distilled weights)."""
        return load_draft(self.draft, lm, self.name)

    def apply(self, lm, ctx):
        drafter = self.drafter(lm)
        eos, tel = lm.tokenizer.eos_token_id, lm.telemetry

        def generate_one(prompt, max_new, temperature, gen):
            target, draft, seq = CachedModel(lm.model), CachedModel(drafter), list(prompt)
            greedy = temperature <= 0
            seq.append(int(probs(target.step(seq)[-1], temperature).multinomial(1, generator=gen)))
            tel["target_forwards"] += 1
            while len(seq) - len(prompt) < max_new and seq[-1] != eos:
                q_logits = draft.step(seq[draft.length :])[-1]  # catch the draft up to seq
                tel["draft_forwards"] += 1
                chain, q = [], []
                n_draft = min(self.gamma, max_new - (len(seq) - len(prompt)))
                for k in range(n_draft):
                    if greedy:  # the argmax, as sampling the one-hot distribution would give
                        chain.append(int(q_logits.argmax()))
                    else:
                        q.append(probs(q_logits, temperature))
                        chain.append(int(q[-1].multinomial(1, generator=gen)))
                    if k + 1 < n_draft:
                        q_logits = draft.step([chain[-1]])[-1]
                        tel["draft_forwards"] += 1
                base = target.length  # seq[-1] is not cached yet
                logits = target.step(seq[base:] + chain)
                tel["target_forwards"] += 1
                if greedy:  # same tokens as verify_chain on one-hot p and q, without building them
                    new, accepted = verify_greedy(logits, chain)
                else:
                    new, accepted = verify_chain(probs(logits, temperature), torch.stack(q), chain, gen)
                count_step(tel, len(chain), accepted)
                target.crop(base + 1 + accepted)
                draft.crop(min(draft.length, base + 1 + accepted))
                append_accepted(seq, new, eos, len(prompt) + max_new)
            return seq[len(prompt) :][:max_new]

        return decoding_loop(lm, generate_one)

    def check_effect(self, lm, ctx, result):
        return None if lm.telemetry["draft_tokens"] else "the draft model proposed no tokens"
