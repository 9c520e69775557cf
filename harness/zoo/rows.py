"""The zoo's training rows (see harness.zoo.train for the recipe and why): a preamble, haystack
text with key->value facts at random sentence boundaries, then queries for many of them, with a loss
mask that weights the answer tokens."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

from harness.synthetic import ANSWER, PASSKEY_GARBAGE, PREAMBLE, Corpus, needle_sentence, passkey_prompt, query_text

if TYPE_CHECKING:  # the recipe imports this module
    from harness.zoo.train import Recipe


class RowMaker:
    """Builds token rows: preamble, haystack with facts at random sentence boundaries, queries."""

    def __init__(self, tokenizer, seed: int):
        self.tok = tokenizer
        self.corpus = Corpus(seed)
        self.rng = random.Random(seed + 1)
        self._pre = self.encode(PREAMBLE)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def row(self, length: int, n_needles: int, n_queries: int) -> tuple[list[int], list[int]]:
        facts, used = [], set()
        for _ in range(n_needles):
            k, v = self.corpus.fact(used)
            used.add(k)
            facts.append((k, v))
        needles = [self.encode(" " + needle_sentence(k, v)) for k, v in facts]
        asked = self.rng.sample(facts, n_queries)
        queries = [(self.encode(query_text(k)), self.encode(ANSWER.format(value=v))) for k, v in asked]
        budget = length - len(self._pre) - sum(map(len, needles)) - sum(len(q) + len(a) for q, a in queries)
        hay: list[list[int]] = []
        while budget > 0:
            s = self.encode(" " + self.corpus.sentence())[:budget]
            hay.append(s)
            budget -= len(s)
        for nd in needles:
            hay.insert(self.rng.randint(0, len(hay)), nd)
        ids = list(self._pre) + [t for s in hay for t in s]
        answer_mask = [0] * len(ids)
        for q, a in queries:
            ids += q + a
            answer_mask += [0] * len(q) + [1] * len(a)
        return ids[:length], answer_mask[:length]

    def drill_row(self, length: int) -> tuple[list[int], list[int]]:
        """Facts as bare "key: value." pairs filling half the row, then as many of them asked
        again as fit: the densest supervision of the same look-up the needle prompt needs."""
        facts, used, ids = [], set(), []
        while len(ids) < length // 2:
            k, v = self.corpus.fact(used)
            used.add(k)
            fact = self.encode(f" {k}: {v}.")
            facts.append(fact)
            ids += fact
        mask = [0] * len(ids)
        while len(ids) < length:
            fact = self.rng.choice(facts)
            ids += fact
            mask += [0] + [1] * (len(fact) - 1)
        return ids[:length], mask[:length]

    def copy_row(self, length: int) -> tuple[list[int], list[int]]:
        """A random span of word, key and digit tokens, then the same span again: every token of
        the repeat is predictable only by looking back, the densest signal for an induction head."""
        span = [
            self.rng.randrange(30, len(self.tok))  # ids below 30: specials, punctuation, digits
            for _ in range(self.rng.randint(8, max(9, length // 2)))
        ]
        ids, mask = [], []
        while len(ids) < length:
            ids += span
            mask += [0] * len(span) if not mask else [0] + [1] * (len(span) - 1)
        return ids[:length], mask[:length]

    def passkey_row(self, length: int) -> tuple[list[int], list[int]]:
        """The passkey prompt with as many filler repeats as fit, the key (1..50000) answered."""
        key = str(self.rng.randint(1, 50000))
        answer = self.encode(f" {key}.")
        per_repeat = len(self.encode(" " + PASSKEY_GARBAGE))
        repeats = max(0, (length - len(self.encode(passkey_prompt(key, 0, 0))) - len(answer)) // per_repeat)
        before = self.rng.randint(0, repeats)
        ids = self.encode(passkey_prompt(key, before, repeats - before)) + answer
        mask = [0] * (len(ids) - len(answer)) + [1] * len(answer)
        while len(ids) < length:
            ids += self.encode(" " + self.corpus.sentence())
        return ids[:length], (mask + [0] * length)[:length]

    def batch(self, length: int, rows: int, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
        ids, masks = [], []
        for _ in range(rows):
            special = None
            if self.rng.random() < recipe.copy_frac:
                special = self.copy_row
            elif self.rng.random() < recipe.passkey_frac:
                special = self.passkey_row
            if special:
                i, m = special(length)
                ids.append(i)
                masks.append(m)
                continue
            if self.rng.random() < recipe.drill_frac:
                i, m = self.drill_row(length)
                ids.append(i)
                masks.append(m)
                continue
            if self.rng.random() < recipe.single_needle_frac:
                n = q = 1
            else:
                n = self.rng.randint(1, max(1, min(recipe.max_needles, length // 48)))
                q = self.rng.randint(max(1, n // 2), n)
            i, m = self.row(length, n, q)
            ids.append(i)
            masks.append(m)
        return torch.tensor(ids), torch.tensor(masks)
