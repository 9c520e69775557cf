"""Token-level negative log-likelihood and perplexity of a text, with a sliding window."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from harness import data
from harness.interfaces import Metric, Task, TaskResult
from harness.registry import register
from harness.synthetic import EVAL_SEED_BASE, Corpus


def windows(n_tokens: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) windows of at most `length` tokens. The first window scores all its
    tokens but the first; each later one scores the next `stride` tokens with the preceding
    `length - stride` as context (as transformers' perplexity guide does). Every token but the
    text's first is scored exactly once, always with at least one token of context."""
    end = min(length, n_tokens)
    out = [(0, end, end - 1)] if end > 1 else []
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        out.append((max(0, new_end - length), new_end, new_end - end))
        end = new_end
    return out


@register
@dataclass
class Perplexity(Task):
    """Perplexity = exp(mean token NLL) of a held-out text at one or several context lengths.
    Windows of `context_length` tokens advance by `stride`; each scores its last tokens with the
    rest of the window as context. Default text: the synthetic corpus with evaluation seeds
    (disjoint from the zoo's training seeds); `path=FILE` scores any local UTF-8 text."""

    name = "perplexity"
    generates = False
    version = "1"
    main_metric = "perplexity"
    summary = "token-level NLL and perplexity, sliding window, at one or several context lengths"
    smoke_args = {"context_length": "64,128", "n_tokens": "256"}
    context_length: tuple[int, ...] = field(default=(512, 1024, 2048), metadata={"help": "window tokens"})
    stride: int | None = field(default=None, metadata={"help": "new tokens per window (< window); None = half"})
    n_tokens: int = field(default=16384, metadata={"help": "tokens of text to score"})
    path: str | None = field(default=None, metadata={"help": "local UTF-8 text; None = synthetic"})

    def __post_init__(self):
        if any(n < 2 for n in self.context_length) or self.n_tokens < 2:
            raise ValueError("context_length and n_tokens must be at least 2")
        if self.stride is not None and not 1 <= self.stride < min(self.context_length):
            raise ValueError("stride must be at least 1 and below the smallest context_length")

    def target_length(self) -> int:
        return max(self.context_length)

    def text_ids(self, lm, seed: int) -> list[int]:
        if self.path:
            ids = lm.encode(data.read_text(self.path, "perplexity text"))
        else:
            corpus, ids = Corpus(EVAL_SEED_BASE + seed), []
            while len(ids) < self.n_tokens:
                ids += lm.encode(" " + corpus.text(50))
        ids = (lm.prompt_prefix() + ids)[: self.n_tokens]
        if len(ids) < 2:
            raise ValueError("the text has fewer than 2 tokens")
        return ids

    def workload(self, limit):
        """An upper bound: the windows of an n_tokens-long text (a shorter file has fewer)."""
        return [
            (e - b, 0)
            for L in self.context_length
            for b, e, _ in windows(self.n_tokens, L, self.stride or max(1, L // 2))[:limit]
        ]

    def run(self, ctx) -> TaskResult:
        lm = ctx.lm
        ids = self.text_ids(lm, ctx.seed)
        plan = []
        for L in self.context_length:
            ws = windows(len(ids), L, self.stride or max(1, L // 2))
            plan += [(L, i, w) for i, w in enumerate(ws[: ctx.limit])]
        rows = []
        batches = [plan[i : i + lm.batch_size] for i in range(0, len(plan), lm.batch_size)]
        for batch in ctx.iterate(batches, total=len(batches), desc=f"perplexity ({len(plan)} windows)"):
            reqs = [(ids[b : e - n], ids[e - n : e]) for _, _, (b, e, n) in batch]
            for (L, i, (b, e, n)), ll in zip(batch, lm.loglikelihood(reqs)):
                rows.append(
                    {
                        "id": f"L{L}-w{i}",
                        "context_length": L,
                        "begin": b,
                        "end": e,
                        "scored_tokens": n,
                        "nll_sum": -ll.logprob,
                        "input_hash": hashlib.sha256(str(ids[b:e]).encode()).hexdigest()[:16],
                    }
                )
        metrics = {}
        for L in self.context_length:
            sel = [r for r in rows if r["context_length"] == L]
            tokens = sum(r["scored_tokens"] for r in sel)
            nll = sum(r["nll_sum"] for r in sel) / tokens
            metrics[f"nll@{L}"] = Metric(
                nll, "lower", "nats/token", n=tokens, count=tokens, sum=sum(r["nll_sum"] for r in sel)
            )
            metrics[f"perplexity@{L}"] = Metric(math.exp(nll), "lower", "", n=tokens)
        longest = max(self.context_length)
        metrics["perplexity"] = Metric(
            metrics[f"perplexity@{longest}"].value, "lower", "", n=metrics[f"perplexity@{longest}"].n
        )
        data_hash = hashlib.sha256(str(ids).encode()).hexdigest()
        return TaskResult(metrics, rows, {"text_tokens": len(ids)}, data_hash)
