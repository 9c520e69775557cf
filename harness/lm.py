"""The small LM API every LLM task uses: generation, log-likelihood of token spans, telemetry.

Methods of kind `lm` act on an LM by patching its model (RoPE, attention) or by wrapping the two
batch-level hooks `_generate_batch` / `_forward_logits` (KV-cache policies, speculative decoding);
both are restored when the method's context exits."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from harness.models import LoadedModel


@dataclass
class LogLikelihood:
    logprob: float       # sum of log-probabilities of the continuation tokens
    greedy: bool         # every continuation token was the argmax
    n_tokens: int


class LM:
    def __init__(self, loaded: LoadedModel, batch_size: int = 8):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.batch_size = batch_size
        self.telemetry: Counter = Counter()
        # Per-call hints a task gives the methods that wrap the batch hooks (e.g. the kv family:
        # "kv_budget", "kv_question_tokens", "kv_decode_tokens"); methods that know none ignore them.
        self.hints: dict = {}
        self._hook = self.model.register_forward_pre_hook(self._count_forward)

    def _count_forward(self, module, args):
        self.telemetry["forward_calls"] += 1

    # -- text <-> tokens ---------------------------------------------------------------------
    @property
    def original_max_length(self) -> int:
        """The context length the model was trained for (its RoPE's original maximum position)."""
        cfg = self.model.config
        rope = getattr(cfg, "rope_parameters", None) or {}
        return int(rope.get("original_max_position_embeddings") or cfg.max_position_embeddings)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_prefix(self) -> list[int]:
        """Special tokens the tokenizer puts before a text (BOS for Llama tokenizers, none for the zoo)."""
        if not hasattr(self, "_prefix"):
            self._prefix = self.tokenizer("", add_special_tokens=True)["input_ids"]
        return list(self._prefix)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- generation --------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[int]]:
        """Continue each prompt; greedy at temperature 0. Returns the new tokens, cut at EOS."""
        out: list[list[int]] = []
        eos = self.tokenizer.eos_token_id
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            width = max(map(len, chunk))
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device)
            if seed is not None:
                torch.manual_seed(seed + start)
            new = self._generate_batch(ids, mask, max_new_tokens, temperature, top_p)
            for row in new.tolist():
                if eos is not None and eos in row:
                    row = row[:row.index(eos)]
                out.append(row)
            self.telemetry["prompt_tokens"] += int(mask.sum())
            self.telemetry["generated_tokens"] += sum(len(r) for r in out[-len(chunk):])
        return out

    @torch.no_grad()
    def _generate_batch(self, ids, mask, max_new_tokens: int, temperature: float, top_p: float):
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 \
            else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  min_new_tokens=0, pad_token_id=self.tokenizer.pad_token_id,
                                  **sampling)
        return gen[:, ids.shape[1]:]

    # -- log-likelihood ----------------------------------------------------------------------
    def loglikelihood(self, requests: list[tuple[list[int], list[int]]]) -> list[LogLikelihood]:
        """log p(continuation | context) for each (context ids, continuation ids) pair."""
        if any(not ctx for ctx, _ in requests):
            raise ValueError("loglikelihood needs at least one context token per request")
        results: list[LogLikelihood] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            seqs = [list(c) + list(x) for c, x in chunk]
            width = max(map(len, seqs))
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            logp = torch.log_softmax(self._forward_logits(ids, mask).float(), dim=-1)
            for b, (ctx, cont) in enumerate(chunk):
                pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=self.device)
                target = torch.tensor(cont, device=self.device)
                lp = logp[b, pos]
                results.append(LogLikelihood(float(lp.gather(1, target[:, None]).sum()),
                                             bool((lp.argmax(-1) == target).all()), len(cont)))
            self.telemetry["scored_tokens"] += sum(len(x) for _, x in chunk)
        return results

    @torch.no_grad()
    def _forward_logits(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def close(self) -> None:
        self._hook.remove()
