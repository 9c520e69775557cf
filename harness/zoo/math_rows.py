"""Training rows of the zoo's math policy model (tiny-math, issue 25): problems of the synthetic
math world v2 (harness.mathworld2), each followed by one solution that the world's stochastic
policy wrote (its errors included, at the world's per-step rates), so that sampling the model gives
a policy with the same kind of varied, sometimes wrong, step-by-step solutions.

An example is tokenised exactly as math_prm_bon's `solutions=generate` prompts it with
`prompt=none`: the tokenizer's prefix (BOS), the problem and a blank line (`LM.prompt_ids(problem,
"\\n\\n")`), then the solution (steps a blank line apart, "\\boxed{answer}" in the last) and EOS, so
generation stops where a solution ends. Examples are packed into rows of the training length (the
last one cut); the loss falls on the solution and EOS tokens (the answer mask), the problem text
gets the recipe's lm_weight. Problem and sample seeds stay below EVAL_SEED_BASE: evaluation pools
(seeds at or above it) never hold a training problem."""

from __future__ import annotations

import random

import torch

from harness import mathworld
from harness.synthetic import EVAL_SEED_BASE

WORLD_VERSION = 2


class MathRowMaker:
    """The RowMaker interface (`batch(length, rows, recipe)`) over world-v2 problems and solutions."""

    def __init__(self, tokenizer, seed: int):
        self.tok = tokenizer
        self.rng = random.Random(seed + 5)
        self.prefix = tokenizer("", add_special_tokens=True)["input_ids"]

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def example(self, seed: int | None = None) -> tuple[list[int], list[int]]:
        """(ids, answer mask) of one problem and one policy solution: world.pools(1, 1, seed), the
        seed drawn from the maker's stream when not given."""
        seed = self.rng.randrange(EVAL_SEED_BASE) if seed is None else seed
        probs, sols = mathworld.world(WORLD_VERSION).pools(1, 1, seed)
        prompt = self.prefix + self.encode(probs[0]["problem"] + "\n\n")
        answer = self.encode(sols[0]["solution"]) + [self.tok.eos_token_id]
        return prompt + answer, [0] * len(prompt) + [1] * len(answer)

    def batch(self, length: int, rows: int, recipe=None) -> tuple[torch.Tensor, torch.Tensor]:
        ids, masks = [], []
        for _ in range(rows):
            row, mask = [], []
            while len(row) < length:
                i, m = self.example()
                row += i
                mask += m
            ids.append(row[:length])
            masks.append(mask[:length])
        return torch.tensor(ids), torch.tensor(masks)
