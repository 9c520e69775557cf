"""Passkey retrieval, the long-context test of the PI and LongLoRA papers."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.registry import register
from harness.synthetic import PASSKEY_GARBAGE, PASSKEY_QUESTION, passkey_prompt, sample_seed

# "What is the pass key? The pass key is": the question, then the answer begun (a chat template
# puts the latter in the assistant's turn)
ANSWER_START = PASSKEY_QUESTION[PASSKEY_QUESTION.index("?") + 1 :]


@register
@dataclass
class Passkey(Task):
    """A random pass key (1..50000) stated once inside repeats of a filler paragraph ("The grass
    is green. The sky is blue. ..."), asked for at the end; greedy decoding, correct when the key
    appears in the continuation — the prompt and key range of LongLoRA's passkey_retrivial.py,
    as in PI (arXiv:2306.15595) and LongLoRA (arXiv:2309.12307). The key's position is uniform
    over the filler. Aliases passkey_<N>k set context_length = N * 1024."""

    name = "passkey"
    version = "1"
    main_metric = "accuracy"
    length_alias = "passkey"
    summary = "passkey retrieval in filler text (PI / LongLoRA papers)"
    smoke_args = {"context_length": "160", "samples": "2", "max_new_tokens": "4"}
    context_length: tuple[int, ...] = field(default=(4096,), metadata={"help": "tokens; several = a curve"})
    samples: int = field(default=20, metadata={"help": "samples per context length"})
    max_new_tokens: int = 10

    def __post_init__(self):
        if any(n < 96 for n in self.context_length):
            raise ValueError("context_length must be at least 96 tokens")
        if self.samples < 1 or self.max_new_tokens < 1:
            raise ValueError("samples and max_new_tokens must be positive")

    def target_length(self) -> int:
        return max(self.context_length)

    def build(self, lm, length: int, seed: int) -> dict:
        rng = random.Random(seed)
        key = str(rng.randint(1, 50000))
        budget = length - self.max_new_tokens - len(lm.prompt_ids(""))
        per_repeat = len(lm.encode(" " + PASSKEY_GARBAGE))
        repeats = max(0, (budget - len(lm.encode(passkey_prompt(key, 0, 0)))) // per_repeat)
        fraction = rng.random()
        while True:
            before = round(fraction * repeats)
            text = passkey_prompt(key, before, repeats - before)
            cut = len(text) - len(ANSWER_START)  # "The pass key is" begins the answer
            ids = lm.prompt_ids(text[:cut], text[cut:])
            if len(ids) <= budget or repeats == 0:
                break
            repeats -= 1
        if len(ids) > budget:
            raise UserError(f"context_length {length} is too short for the passkey prompt")
        return {"ids": ids, "key": key, "depth": 100.0 * before / max(1, repeats), "repeats": repeats}

    def plan(self, limit):
        return [(L, r) for r in range(self.samples) for L in self.context_length][:limit]

    def workload(self, limit):
        return [(L - self.max_new_tokens, self.max_new_tokens) for L, _ in self.plan(limit)]

    def run(self, ctx) -> TaskResult:
        lm = ctx.lm
        plan = self.plan(ctx.limit)
        rows = []
        batches = [plan[i : i + lm.batch_size] for i in range(0, len(plan), lm.batch_size)]
        for batch in ctx.iterate(batches, total=len(batches), desc=f"passkey ({len(plan)} samples)"):
            built = [self.build(lm, L, sample_seed(ctx.seed, L, r)) for L, r in batch]
            for (L, r), b, out in zip(batch, built, lm.generate([b["ids"] for b in built], self.max_new_tokens)):
                pred = lm.decode(out)
                correct = int(re.search(rf"(?<!\d){b['key']}(?!\d)", pred) is not None)
                rows.append(
                    {
                        "id": f"L{L}-r{r}",
                        "context_length": L,
                        "depth": round(b["depth"], 2),
                        "input_hash": hashlib.sha256(str(b["ids"]).encode()).hexdigest()[:16],
                        "prompt_tokens": len(b["ids"]),
                        "target": b["key"],
                        "prediction": pred,
                        "correct": correct,
                    }
                )
        metrics = {"accuracy": Metric.mean([r["correct"] for r in rows], "higher", "fraction", "correct")}
        if len(self.context_length) > 1:
            for L in self.context_length:
                metrics[f"accuracy@{L}"] = Metric.mean(
                    [r["correct"] for r in rows if r["context_length"] == L], "higher", "fraction"
                )
        data_hash = hashlib.sha256("".join(r["input_hash"] for r in rows).encode()).hexdigest()
        return TaskResult(metrics, rows, {}, data_hash)
