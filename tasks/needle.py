"""RULER-style single needle in a haystack, greedy decoding, string-match scoring."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from harness import data
from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.registry import register
from harness.synthetic import PREAMBLE, Corpus, needle_sentence, query_text, sample_seed


def depth_grid(n: int) -> list[float]:
    """n depths evenly from 0 to 100 % (a single depth is the middle)."""
    return [50.0] if n == 1 else [100.0 * i / (n - 1) for i in range(n)]


@register
@dataclass
class Needle(Task):
    """A key -> 7-digit value sentence (RULER's niah template) hidden at a depth of a haystack,
    the question at the end; the continuation is greedy and scored by substring match of the value
    (RULER's string_match_all with one reference). Context length counts the model's own tokens,
    including the generation budget. Aliases needle_<N>k set context_length = N * 1024."""
    name = "needle"
    version = "1"
    main_metric = "accuracy"
    length_alias = "needle"
    summary = "single needle retrieval over a context-length x depth grid (RULER niah_single)"
    smoke_args = {"context_length": "160", "depths": "2", "samples_per_depth": "1", "max_new_tokens": "4"}
    context_length: tuple[int, ...] = field(default=(4096,), metadata={"help": "tokens; several = a grid"})
    depths: int = field(default=10, metadata={"help": "depths evenly spaced over 0-100 %"})
    samples_per_depth: int = 10
    haystack: str = field(default="synthetic", metadata={"help": "'synthetic' or a local UTF-8 text file"})
    max_new_tokens: int = 16

    def __post_init__(self):
        if any(n < 64 for n in self.context_length):
            raise ValueError("context_length must be at least 64 tokens")
        if self.depths < 1 or self.samples_per_depth < 1 or self.max_new_tokens < 1:
            raise ValueError("depths, samples_per_depth and max_new_tokens must be positive")

    def target_length(self) -> int:
        return max(self.context_length)

    # -- prompt construction -----------------------------------------------------------------
    def _source(self, seed: int):
        if self.haystack == "synthetic":
            corpus = Corpus(seed)
            return corpus, corpus.sentence
        sents = self._file_sentences
        rng = random.Random(seed)
        pos = [rng.randrange(len(sents))]

        def next_sentence():
            pos[0] = (pos[0] + 1) % len(sents)
            return sents[pos[0]]
        return Corpus(seed), next_sentence

    def build(self, lm, length: int, depth: float, seed: int) -> dict:
        """One sample: the prompt's token ids with the needle at `depth` percent of the haystack."""
        corpus, next_sentence = self._source(seed)
        key, value = corpus.fact()
        needle, query = needle_sentence(key, value), query_text(key)
        budget = length - self.max_new_tokens - len(lm.prompt_prefix())
        fixed = len(lm.encode(PREAMBLE + " " + needle + query))
        hay, used = [], 0
        while used < budget - fixed:   # tokenized a chunk at a time: one tokenizer call, not one per sentence
            chunk = [next_sentence() for _ in range(32)]
            counts = lm.tokenizer([" " + x for x in chunk], add_special_tokens=False)["input_ids"]
            for sentence, ids in zip(chunk, counts):
                if used >= budget - fixed:
                    break
                hay.append(sentence)
                used += len(ids)
        while True:   # sentence-wise counts are exact for the zoo tokenizer, close for BPE ones
            at = round(depth / 100 * len(hay))
            before = PREAMBLE + "".join(" " + s for s in hay[:at])
            text = before + " " + needle + "".join(" " + s for s in hay[at:]) + query
            ids = lm.prompt_prefix() + lm.encode(text)
            if len(ids) <= budget or not hay:
                break
            hay.pop()
        if len(ids) > budget:
            raise UserError(f"context_length {length} is too short for the needle and question")
        hay_start = len(lm.encode(PREAMBLE))
        needle_at = len(lm.encode(before)) - hay_start
        hay_tokens = len(lm.encode(PREAMBLE + "".join(" " + s for s in hay))) - hay_start
        return {"ids": ids, "key": key, "value": value, "needle_token": needle_at,
                "haystack_tokens": hay_tokens}

    def samples_plan(self, seed: int) -> list[tuple[int, float, int]]:
        """(length, depth, repetition), repetition-major so that --limit still covers the grid."""
        return [(L, d, r) for r in range(self.samples_per_depth) for L in self.context_length
                for d in depth_grid(self.depths)]

    def run(self, ctx) -> TaskResult:
        lm = ctx.lm
        if self.haystack != "synthetic":
            self._file_sentences = data.sentences(data.read_text(self.haystack, "needle haystack"))
        plan = self.samples_plan(ctx.seed)[:ctx.limit]
        rows = []
        batches = [plan[i:i + lm.batch_size] for i in range(0, len(plan), lm.batch_size)]
        for batch in ctx.iterate(batches, total=len(batches), desc=f"needle ({len(plan)} samples)"):
            built = [self.build(lm, L, d, sample_seed(ctx.seed, L, d, r)) for L, d, r in batch]
            outputs = lm.generate([b["ids"] for b in built], self.max_new_tokens)
            for (L, d, r), b, out in zip(batch, built, outputs):
                pred = lm.decode(out)
                rows.append({"id": f"L{L}-d{d:g}-r{r}", "context_length": L, "depth": d, "repetition": r,
                             "input_hash": hashlib.sha256(str(b["ids"]).encode()).hexdigest()[:16],
                             "prompt_tokens": len(b["ids"]), "needle_token": b["needle_token"],
                             "haystack_tokens": b["haystack_tokens"], "key": b["key"],
                             "target": b["value"], "prediction": pred, "correct": int(b["value"] in pred)})
        metrics = {"accuracy": Metric.mean([r["correct"] for r in rows], "higher", "fraction")}
        if len(self.context_length) > 1:
            for L in self.context_length:
                metrics[f"accuracy@{L}"] = Metric.mean([r["correct"] for r in rows if r["context_length"] == L],
                                                       "higher", "fraction")
        grid = {}
        for r in rows:
            grid.setdefault((r["context_length"], r["depth"]), []).append(r["correct"])
        details = {"grid": [{"context_length": L, "depth": d, "n": len(v), "accuracy": sum(v) / len(v)}
                            for (L, d), v in sorted(grid.items())]}
        data_hash = hashlib.sha256("".join(r["input_hash"] for r in rows).encode()).hexdigest()
        return TaskResult(metrics, rows, details, data_hash)
