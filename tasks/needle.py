"""RULER-style needle in a haystack (single, multikey, multivalue, multiquery, variable tracking),
greedy decoding, string-match scoring."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from harness import data
from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.registry import register
from harness.synthetic import PREAMBLE, Corpus, needle_sentence, query_text, sample_seed

VARIANTS = ("single", "multikey", "multivalue", "multiquery", "vt")
# RULER's multi-answer questions, with the answer prefix ending like the needle sentence ("...: ")
MULTI_QUESTION = (
    "\nWhat are all the special magic numbers for {keys} mentioned in the provided text?"
    "\nAnswer: the special magic numbers for {keys}:"
)
VT_PREAMBLE = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
VT_QUESTION = (
    "\nQuestion: Find all variables that are assigned the value {value} in the text above. "
    "Answer: According to the chain(s) of variable assignment in the text above, {n} variables "
    "are assigned the value {value}, they are:"
)


def split_answer(query: str) -> tuple[str, str]:
    """(question, answer prefix): a query ends with the start of its answer ("...\nAnswer: the
    special magic number for K:"), which a chat template puts in the assistant's turn."""
    at = query.rfind("Answer:")
    while at > 0 and query[at - 1].isspace():
        at -= 1
    return (query[:at], query[at:]) if at > 0 else (query, "")


def _and(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def scenario(variant: str, corpus: Corpus, rng: random.Random, n: int, hops: int):
    """(preamble, statements, query, references). statements[0] is the one placed at the
    requested depth; the others go to random depths (variable-tracking statements keep their
    order, after the first)."""
    if variant == "vt":
        names = [corpus.fact()[0] for _ in range(hops + 1)]
        while len(set(names)) < len(names):
            names = [corpus.fact()[0] for _ in range(hops + 1)]
        value = str(rng.randint(10000, 99999))
        chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        return VT_PREAMBLE, chain, VT_QUESTION.format(value=value, n=len(names)), names
    facts, used = [], set()
    count = 1 if variant == "single" else n
    for i in range(count):
        key, value = corpus.fact(used)
        if variant == "multivalue" and facts:
            key = facts[0][0]
        used.add(key)
        facts.append((key, value))
    statements = [needle_sentence(k, v) for k, v in facts]
    if variant in ("single", "multikey"):
        return PREAMBLE, statements, query_text(facts[0][0]), [facts[0][1]]
    keys = [facts[0][0]] if variant == "multivalue" else [k for k, _ in facts]
    return PREAMBLE, statements, MULTI_QUESTION.format(keys=_and(keys)), [v for _, v in facts]


def depth_grid(n: int) -> list[float]:
    """n depths evenly from 0 to 100 % (a single depth is the middle)."""
    return [50.0] if n == 1 else [100.0 * i / (n - 1) for i in range(n)]


@register
@dataclass
class Needle(Task):
    """A key -> 7-digit value sentence (RULER's niah template) hidden at a depth of a haystack,
    the question at the end; the continuation is greedy and scored by RULER's string_match_all
    (the fraction of reference strings found in it). Context length counts the model's own
    tokens, including the generation budget. Aliases needle_<N>k set context_length = N * 1024.

    variant: single (RULER niah_single); multikey (n needles, one asked); multivalue (one key, n
    values, all asked); multiquery (n keys, all asked); vt (variable tracking: one chain of
    `hops` assignments VAR b = VAR a, all names asked). The first statement sits at the grid's
    depth, the others at random depths. n: needles for the multi variants (RULER's 4).
    max_new_tokens: None = 16 for single/multikey, 48 for the multi-answer variants."""

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
    variant: str = field(default="single", metadata={"help": "single, multikey, multivalue, multiquery, vt"})
    n: int = field(default=4, metadata={"help": "needles of the multi variants"})
    hops: int = field(default=4, metadata={"help": "assignments in the vt chain"})
    max_new_tokens: int | None = None

    def __post_init__(self):
        if any(n < 64 for n in self.context_length):
            raise ValueError("context_length must be at least 64 tokens")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        if self.max_new_tokens is None:
            self.max_new_tokens = 16 if self.variant in ("single", "multikey") else 48
        if min(self.depths, self.samples_per_depth, self.max_new_tokens, self.n, self.hops) < 1:
            raise ValueError("depths, samples_per_depth, max_new_tokens, n and hops must be positive")

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
        """One sample: the prompt's token ids, the first statement at `depth` percent of the haystack."""
        corpus, next_sentence = self._source(seed)
        rng = random.Random(seed)
        preamble, statements, query, refs = scenario(self.variant, corpus, rng, self.n, self.hops)
        question, answer = split_answer(query)
        overhead = len(lm.prompt_ids(""))  # the tokenizer's prefix (and a chat template's turn markers)
        budget = length - self.max_new_tokens - overhead
        fixed = len(lm.encode(preamble + "".join(" " + x for x in statements) + query))
        hay, used = [], 0
        while used < budget - fixed:  # tokenized a chunk at a time: one tokenizer call, not one per sentence
            chunk = [next_sentence() for _ in range(32)]
            counts = lm.tokenizer([" " + x for x in chunk], add_special_tokens=False)["input_ids"]
            for sentence, ids in zip(chunk, counts):
                if used >= budget - fixed:
                    break
                hay.append(sentence)
                used += len(ids)
        others = sorted(rng.random() for _ in statements[1:])
        if self.variant == "vt":  # the chain keeps its order after the first statement
            others = [depth / 100 + (1 - depth / 100) * x for x in others]
        while True:  # sentence-wise counts are exact for the zoo tokenizer, close for BPE ones
            slots = [round(depth / 100 * len(hay))] + [round(x * len(hay)) for x in others]
            parts, before = list(hay), None
            for at, text in sorted(zip(slots, statements), key=lambda p: p[0], reverse=True):
                parts.insert(at, text)
            first = parts.index(statements[0])
            before = preamble + "".join(" " + x for x in parts[:first])
            ids = lm.prompt_ids(before + "".join(" " + x for x in parts[first:]) + question, answer)
            if len(ids) <= budget or not hay:
                break
            hay.pop()
        if len(ids) > budget:
            raise UserError(f"context_length {length} is too short for the needles and question")
        hay_start = len(lm.encode(preamble))
        hay_tokens = len(ids) - overhead - hay_start - len(lm.encode(query))
        return {
            "ids": ids,
            "refs": refs,
            "needle_token": len(lm.encode(before)) - hay_start,
            "query_tokens": len(lm.encode(query)),
            "haystack_tokens": hay_tokens,
        }  # statements included; exact for the zoo tokenizer

    def samples_plan(self, seed: int) -> list[tuple[int, float, int]]:
        """(length, depth, repetition), repetition-major so that --limit still covers the grid."""
        return [
            (L, d, r)
            for r in range(self.samples_per_depth)
            for L in self.context_length
            for d in depth_grid(self.depths)
        ]

    def workload(self, limit):
        return [(L - self.max_new_tokens, self.max_new_tokens) for L, _, _ in self.samples_plan(0)[:limit]]

    def run(self, ctx) -> TaskResult:
        lm = ctx.lm
        if self.haystack != "synthetic":
            self._file_sentences = data.sentences(data.read_text(self.haystack, "needle haystack"))
        plan = self.samples_plan(ctx.seed)[: ctx.limit]
        rows = []
        batches = [plan[i : i + lm.batch_size] for i in range(0, len(plan), lm.batch_size)]
        for batch in ctx.iterate(batches, total=len(batches), desc=f"needle/{self.variant} ({len(plan)} samples)"):
            built = [self.build(lm, L, d, sample_seed(ctx.seed, L, d, r)) for L, d, r in batch]
            outputs = lm.generate([b["ids"] for b in built], self.max_new_tokens)
            for (L, d, r), b, out in zip(batch, built, outputs):
                pred = lm.decode(out)
                score = sum(ref.lower() in pred.lower() for ref in b["refs"]) / len(b["refs"])
                rows.append(
                    {
                        "id": f"L{L}-d{d:g}-r{r}",
                        "context_length": L,
                        "depth": d,
                        "repetition": r,
                        "input_hash": hashlib.sha256(str(b["ids"]).encode()).hexdigest()[:16],
                        "prompt_tokens": len(b["ids"]),
                        "needle_token": b["needle_token"],
                        "haystack_tokens": b["haystack_tokens"],
                        "references": b["refs"],
                        "prediction": pred,
                        "score": score,
                    }
                )
        metrics = {"accuracy": Metric.mean([r["score"] for r in rows], "higher", "fraction", "score")}
        if len(self.context_length) > 1:
            for L in self.context_length:
                metrics[f"accuracy@{L}"] = Metric.mean(
                    [r["score"] for r in rows if r["context_length"] == L], "higher", "fraction"
                )
        grid = {}
        for r in rows:
            grid.setdefault((r["context_length"], r["depth"]), []).append(r["score"])
        details = {
            "grid": [
                {"context_length": L, "depth": d, "n": len(v), "accuracy": sum(v) / len(v)}
                for (L, d), v in sorted(grid.items())
            ]
        }
        data_hash = hashlib.sha256("".join(r["input_hash"] for r in rows).encode()).hexdigest()
        return TaskResult(metrics, rows, details, data_hash)
