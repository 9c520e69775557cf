"""Shared machinery of the speculative-decoding family: the verification rules and a decoding
loop over the target's and the draft's KV caches, counted in the LM's telemetry."""

from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache


def probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Next-token distribution; temperature 0 is the one-hot argmax (greedy)."""
    if temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
    return torch.softmax(logits.float() / temperature, dim=-1)


def verify_chain(p: torch.Tensor, q: torch.Tensor, draft: list[int], generator=None) -> tuple[list[int], int]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) for a chain of γ draft tokens.

    p: [γ+1, V] target distributions, q: [γ, V] draft distributions. Accept draft[i] with
    probability min(1, p_i(x)/q_i(x)); at the first rejection sample from norm(max(0, p_i − q_i))
    and stop; if all are accepted, add a bonus token from p_γ. Returns (new tokens, accepted
    draft count). With one-hot p and q (temperature 0) this is greedy verification."""
    out = []
    for i, x in enumerate(draft):
        ratio = p[i, x] / q[i, x] if q[i, x] > 0 else torch.tensor(0.0)
        if torch.rand((), generator=generator) < torch.clamp(ratio, max=1.0):
            out.append(x)
            continue
        residual = torch.clamp(p[i] - q[i], min=0)
        residual = residual / residual.sum() if residual.sum() > 0 else p[i]
        out.append(int(torch.multinomial(residual, 1, generator=generator)))
        return out, i
    out.append(int(torch.multinomial(p[len(draft)], 1, generator=generator)))
    return out, len(draft)


def verify_greedy(target_logits: torch.Tensor, draft: list[int]) -> tuple[list[int], int]:
    """verify_chain at temperature 0 without building distributions: with one-hot p and q a draft
    token is accepted iff it is the target's argmax, and the first rejection (or the bonus) takes
    the target's argmax. target_logits: [γ+1, V]. Same (new tokens, accepted count); no random
    draws (at temperature 0 none would change anything)."""
    best = target_logits.argmax(-1).tolist()
    accepted = next((i for i, x in enumerate(draft) if x != best[i]), len(draft))
    return draft[:accepted] + [best[accepted]], accepted


class CachedModel:
    """A causal LM stepped through a DynamicCache that can be cropped back after rejections."""

    def __init__(self, model):
        self.model, self.cache, self.length = model, DynamicCache(), 0

    @torch.no_grad()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed tokens after the cached prefix; returns logits [len(tokens), V]."""
        ids = torch.tensor([tokens], device=self.model.device)
        pos = torch.arange(self.length, self.length + len(tokens), device=self.model.device)
        out = self.model(
            input_ids=ids, past_key_values=self.cache, use_cache=True, position_ids=pos[None], cache_position=pos
        )
        self.length += len(tokens)
        return out.logits[0]

    def crop(self, length: int) -> None:
        self.cache.crop(length)
        self.length = length


def count_step(tel, drafted: int, accepted: int) -> None:
    """Telemetry of one verification step of a chain of `drafted` tokens, `accepted` of them kept.
    tested_at_i counts the steps in which position i was verified at all, so the per-position
    acceptance (EAGLE's alpha.py "n-α") is accepted_at_i / tested_at_i; rejections counts steps
    that stopped before the chain's end (α̂ = accepted / (accepted + rejections) is the maximum-
    likelihood per-token acceptance rate of the i.i.d. model behind (1 − α^(γ+1)) / (1 − α))."""
    tel["draft_tokens"] += drafted
    tel["accepted_draft_tokens"] += accepted
    tel["spec_steps"] += 1
    tel["rejections"] += accepted < drafted
    for i in range(1, min(accepted + 1, drafted) + 1):
        tel[f"tested_at_{i}"] += 1
    for i in range(1, accepted + 1):
        tel[f"accepted_at_{i}"] += 1


def load_draft(spec: str, lm, who: str):
    """A draft model on the LM's device; it must share the target's vocabulary."""
    from harness import models
    from harness.errors import UserError

    drafter = models.load(spec, lm.device).model
    if drafter.config.vocab_size != lm.model.config.vocab_size:
        raise UserError(
            f"{who}: draft {spec} has a vocabulary of {drafter.config.vocab_size}, "
            f"the target {lm.model.config.vocab_size}; they must share a tokenizer"
        )
    return drafter


def append_accepted(seq: list[int], tokens, eos, limit: int) -> None:
    """Append a verification step's tokens to `seq`, stopping after EOS or once `seq` holds `limit`
    tokens (prompt + max_new): a step may accept more than the budget has room for."""
    for token in tokens:
        seq.append(token)
        if token == eos or len(seq) >= limit:
            return


@contextlib.contextmanager
def decoding_loop(lm, generate_one):
    """Route the LM's batch generation through generate_one(prompt ids, max_new, temperature, seed
    generator) -> new ids, one unpadded row at a time (speculative decoding runs at batch 1)."""

    def generate_batch(ids, mask, max_new_tokens, temperature, top_p):
        if top_p < 1.0:
            from harness.errors import UserError

            raise UserError("speculative decoding methods sample from the full distribution (top_p=1)")
        rows = []
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
        for row, m in zip(ids.tolist(), mask.tolist()):
            prompt = [t for t, keep in zip(row, m) if keep]
            rows.append(generate_one(prompt, max_new_tokens, temperature, gen))
        width = max(map(len, rows))
        pad = lm.tokenizer.pad_token_id
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

    with lm.batch_hooks(generate_batch=generate_batch):
        yield
