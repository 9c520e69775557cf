"""The zoo's training rows (see harness.zoo.train for the recipe and why): a preamble, haystack
text with key->value facts at random sentence boundaries, then queries for many of them, with a loss
mask that weights the answer tokens.

Every row starts with the tokenizer's own prefix (`tokenizer("", add_special_tokens=True)`): <s>
for the v2 BPE, nothing for the v1 word-level tokenizer. That is the prefix harness.lm.LM puts
before every prompt and lm-eval's HFLM before every text, so training and evaluation agree.

The v2 mix (recipe fields prose_frac, foreign_frac, noise_frac, random_fact_frac, plain_frac) draws
haystacks from several generators and keys/values from random strings (harness.zoo.generators);
with those fields at 0 (Recipe's defaults, which the fitting methods use) the rows are exactly
round 1's, random draws included."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

from harness.synthetic import ANSWER, PASSKEY_GARBAGE, PREAMBLE, Corpus, needle_sentence, passkey_prompt, query_text
from harness.zoo.generators import Filler, random_key, random_value

if TYPE_CHECKING:  # the recipe imports this module
    from harness.zoo.train import Recipe


class RowMaker:
    """Builds token rows: preamble, haystack with facts at random sentence boundaries, queries."""

    def __init__(self, tokenizer, seed: int):
        self.tok = tokenizer
        self.seed = seed
        self.corpus = Corpus(seed)
        self.rng = random.Random(seed + 1)
        self.prefix = tokenizer("", add_special_tokens=True)["input_ids"]  # BOS (v2) or none (v1)
        self._pre = self.prefix + self.encode(PREAMBLE)
        self._filler: tuple[tuple, Filler] | None = None

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def fact(self, used: set[str], varied: bool) -> tuple[str, str]:
        """A fresh (key, value): the corpus' key word and 7 digits, or (varied) random strings."""
        if not varied:
            return self.corpus.fact(used)
        while True:
            k = random_key(self.rng, self.corpus)
            if k not in used:
                return k, random_value(self.rng)

    def filler(self, recipe: Recipe | None):
        """The sentence source of one row's haystack: the corpus, or one of the v2 generators."""
        weights = _filler_weights(recipe)
        if weights is None:
            return self.corpus.sentence
        if self._filler is None or self._filler[0] != tuple(weights.items()):
            self._filler = (tuple(weights.items()), Filler(self.seed + 2, weights))
        return self._filler[1].source()

    def row(
        self, length: int, n_needles: int, n_queries: int, recipe: Recipe | None = None
    ) -> tuple[list[int], list[int]]:
        varied = bool(recipe and recipe.random_fact_frac) and self.rng.random() < recipe.random_fact_frac
        sentence = self.filler(recipe)
        facts, used = [], set()
        for _ in range(n_needles):
            k, v = self.fact(used, varied)
            used.add(k)
            facts.append((k, v))
        needles = [self.encode(" " + needle_sentence(k, v)) for k, v in facts]
        asked = self.rng.sample(facts, n_queries)
        queries = [(self.encode(query_text(k)), self.encode(ANSWER.format(value=v))) for k, v in asked]
        budget = length - len(self._pre) - sum(map(len, needles)) - sum(len(q) + len(a) for q, a in queries)
        hay: list[list[int]] = []
        while budget > 0:
            s = self.encode(" " + sentence())[:budget]
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

    def drill_row(self, length: int, varied: bool = False) -> tuple[list[int], list[int]]:
        """Facts as bare "key: value." pairs filling half the row, then as many of them asked
        again as fit: the densest supervision of the same look-up the needle prompt needs."""
        facts, used, ids = [], set(), list(self.prefix)
        while len(ids) < length // 2:
            k, v = self.fact(used, varied)
            used.add(k)
            fact = self.encode(f" {k}: {v}.")
            facts.append((fact, self._cue(k, fact)))
            ids += fact
        mask = [0] * len(ids)
        while len(ids) < length and facts:
            fact, cue = self.rng.choice(facts)
            ids += fact
            mask += [0] * cue + [1] * (len(fact) - cue)
        return ids[:length], mask[:length]

    def _cue(self, key: str, fact: list[int]) -> int:
        """Tokens of a drill fact that cue the answer: the key's (one for a v1 single-token key,
        as round 1 did; all of a v2 key's BPE pieces, so the answer is what follows the key)."""
        head = self.encode(f" {key}:")
        return len(head) - 1 if len(head) > 2 and fact[: len(head)] == head else 1

    def copy_row(self, length: int) -> tuple[list[int], list[int]]:
        """A random span of word, key and digit tokens, then the same span again: every token of
        the repeat is predictable only by looking back, the densest signal for an induction head."""
        vocab = len(self.tok)  # once: the fast tokenizer's len() rebuilds its vocabulary each call
        span = [
            self.rng.randrange(30, vocab)  # ids below 30: specials, punctuation, digits (v1; bytes in v2)
            for _ in range(self.rng.randint(8, max(9, length // 2)))
        ]
        ids, mask = list(self.prefix), [0] * len(self.prefix)
        while len(ids) < length:
            mask += [0] * len(span) if len(ids) == len(self.prefix) else [0] + [1] * (len(span) - 1)
            ids += span
        return ids[:length], mask[:length]

    def plain_row(self, length: int) -> tuple[list[int], list[int]]:
        """Corpus text only (language modelling: the perplexity task's and the draft's text)."""
        ids = list(self.prefix)
        while len(ids) < length:
            ids += self.encode(" " + self.corpus.sentence())
        return ids[:length], [0] * length

    def passkey_row(self, length: int) -> tuple[list[int], list[int]]:
        """The passkey prompt with as many filler repeats as fit, the key (1..50000) answered."""
        key = str(self.rng.randint(1, 50000))
        answer = self.encode(f" {key}.")
        per_repeat = len(self.encode(" " + PASSKEY_GARBAGE))
        fixed = len(self.prefix) + len(self.encode(passkey_prompt(key, 0, 0))) + len(answer)
        repeats = max(0, (length - fixed) // per_repeat)
        before = self.rng.randint(0, repeats)
        ids = self.prefix + self.encode(passkey_prompt(key, before, repeats - before)) + answer
        mask = [0] * (len(ids) - len(answer)) + [1] * len(answer)
        while len(ids) < length:
            ids += self.encode(" " + self.corpus.sentence())
        return ids[:length], (mask + [0] * length)[:length]

    def batch(self, length: int, rows: int, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
        ids, masks = [], []
        for _ in range(rows):
            special = None
            if recipe.plain_frac and self.rng.random() < recipe.plain_frac:
                special = self.plain_row
            elif self.rng.random() < recipe.copy_frac:
                special = self.copy_row
            elif self.rng.random() < recipe.passkey_frac:
                special = self.passkey_row
            if special:
                i, m = special(length)
                ids.append(i)
                masks.append(m)
                continue
            if self.rng.random() < recipe.drill_frac:
                varied = bool(recipe.random_fact_frac) and self.rng.random() < recipe.random_fact_frac
                i, m = self.drill_row(length, varied)
                ids.append(i)
                masks.append(m)
                continue
            if self.rng.random() < recipe.single_needle_frac:
                n = q = 1
            else:
                n = self.rng.randint(1, max(1, min(recipe.max_needles, length // 48)))
                q = self.rng.randint(max(1, n // 2), n)
            i, m = self.row(length, n, q, recipe)
            ids.append(i)
            masks.append(m)
        return torch.tensor(ids), torch.tensor(masks)


def _filler_weights(recipe: Recipe | None) -> dict[str, float] | None:
    """Haystack sources of the v2 mix by weight (the corpus takes what the others leave), or None
    for round 1's corpus-only haystacks."""
    if recipe is None:
        return None
    others = {"prose": recipe.prose_frac, "foreign": recipe.foreign_frac, "noise": recipe.noise_frac}
    if not any(others.values()):
        return None
    return {"corpus": max(0.0, 1.0 - sum(others.values())), **others}
