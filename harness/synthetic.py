"""Seeded synthetic corpus: pseudo-natural haystack text, key->value facts, needle prompts.

One generator serves the zoo's training data and the `needle` / `perplexity` tasks, so the
reference models see the same kind of text they are evaluated on. The *vocabulary* is fixed
(built from a constant seed); the *text* depends on the caller's seed. Training uses seeds
< EVAL_SEED_BASE and evaluation seeds >= EVAL_SEED_BASE, so evaluation text is held out.

The needle template follows RULER's niah (a "special magic number" sentence with a 7-digit value,
the question at the end, an answer prefix, string-match scoring), with the value right after
"{key}:" and an answer prefix that ends the same way. That adjacency is what lets a model of a
few million parameters learn the look-up (an induction-style copy); with RULER's "for {key} is:
{value}" the zoo models never left chance in a recipe sweep (answer loss flat at ln 1000 per chunk).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

EVAL_SEED_BASE = 1_000_000  # seeds at or above this are reserved for evaluation text

_VOCAB_SEED = 20240229
_ONSETS = "b c d f g h k l m n p r s t v w z br dr fl gr kl pl st tr sk sp ch sh th".split()
_NUCLEI = "a e i o u ai ea oo ou".split()
_CODAS = ["", "", "n", "r", "l", "s", "t", "m", "nd", "rk", "st"]

PREAMBLE = (
    "Some special magic numbers are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the numbers afterwards.\n"
)
NEEDLE = "Remember the special magic number for {key}: {value}."
QUESTION = "\nWhat is the special magic number for {key} mentioned in the provided text?"
ANSWER_PREFIX = "\nAnswer: the special magic number for {key}:"
ANSWER = " {value}."

# The passkey-retrieval prompt of the PI and LongLoRA papers (LongLoRA's passkey_retrivial.py),
# whose filler is also RULER's "noise" haystack.
PASSKEY_TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there."
)
PASSKEY_GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_INFO = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"
# RULER's variable-tracking template words (variable names come from the key lexicon)
VT_WORDS = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text. "
    "VAR = Question: Find all variables that are assigned the value in the text above. Answer: "
    "According to the chain(s) of variable assignment in the text above, variables are "
    "assigned the value, they are: What are all the special magic numbers for mentioned"
)

_FUNCTION_WORDS = (
    "the a an of in on at with from to by near under over and but while when "
    "because after before then every each some many few this that these those "
    "it they he she we was were is are has had will can could would"
).split()


def _pseudo_words(rng: random.Random, n: int, taken: set[str], syllables: tuple[int, int]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        w = "".join(
            rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(rng.randint(*syllables))
        )
        if w not in taken and len(w) > 2:
            taken.add(w)
            words.append(w)
    return words


@dataclass(frozen=True)
class Lexicon:
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]  # past-tense verbs
    adverbs: tuple[str, ...]
    names: tuple[str, ...]
    keys: tuple[str, ...]  # needle keys; never used in haystack sentences

    def all_words(self) -> list[str]:
        template_words = " ".join([PREAMBLE, NEEDLE, QUESTION, ANSWER_PREFIX]).replace("{key}", "")
        extra = [w.strip(".,:?!\n") for w in template_words.split()]
        seen: dict[str, None] = {}
        for w in [
            *_FUNCTION_WORDS,
            *extra,
            *self.nouns,
            *self.adjectives,
            *self.verbs,
            *self.adverbs,
            *self.names,
            *self.keys,
        ]:
            if w:
                seen.setdefault(w, None)
                seen.setdefault(w.capitalize(), None)
        return list(seen)


def build_lexicon() -> Lexicon:
    rng = random.Random(_VOCAB_SEED)
    taken = set(_FUNCTION_WORDS)
    nouns = _pseudo_words(rng, 320, taken, (1, 2))
    adjectives = _pseudo_words(rng, 100, taken, (1, 2))
    verbs = [w + "ed" for w in _pseudo_words(rng, 140, taken, (1, 2))]
    adverbs = [w + "ly" for w in _pseudo_words(rng, 50, taken, (1, 2))]
    names = _pseudo_words(rng, 60, taken, (2, 2))
    keys = _pseudo_words(rng, 400, taken, (2, 3))
    return Lexicon(*(tuple(x) for x in (nouns, adjectives, verbs, adverbs, names, keys)))


LEXICON = build_lexicon()

_TEMPLATES = (
    "the {adj} {noun} {verb} {prep} the {noun2} .",
    "{name} {verb} a {adj} {noun} {adv} .",
    "every {noun} {verb} the {noun2} {prep} the {adj} {noun3} .",
    "when the {noun} {verb} , {name} {verb2} the {noun2} .",
    "the {noun} was {adj} and the {noun2} was {adj2} .",
    "{name} and {name2} {verb} {prep} the {adj} {noun} .",
    "many {noun} {verb} {adv} because the {noun2} was {adj} .",
    "after the {noun} {verb} , the {adj} {noun2} {verb2} {adv} .",
)
_PREPS = "in on at with from near under over by".split()


class Corpus:
    """Seeded text source. A paragraph draws its words from a small topic so text is learnable."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self._topic()

    def _topic(self) -> None:
        r, lx = self.rng, LEXICON
        self.topic = {
            "noun": r.sample(lx.nouns, 24),
            "adj": r.sample(lx.adjectives, 12),
            "verb": r.sample(lx.verbs, 16),
            "adv": r.sample(lx.adverbs, 6),
            "name": r.sample(lx.names, 5),
        }

    def sentence(self) -> str:
        r, t = self.rng, self.topic
        if r.random() < 0.04:
            self._topic()
        fill = {}
        for slot in ("noun", "adj", "verb", "adv", "name"):
            for suffix in ("", "2", "3"):
                fill[slot + suffix] = r.choice(t[slot])
        fill["prep"] = r.choice(_PREPS)
        for slot in ("name", "name2", "name3"):
            fill[slot] = fill[slot].capitalize()  # proper nouns
        s = r.choice(_TEMPLATES).format(**fill)
        s = s.replace(" .", ".").replace(" ,", ",")
        return s[0].upper() + s[1:]

    def sentences(self, n: int) -> list[str]:
        return [self.sentence() for _ in range(n)]

    def text(self, n_sentences: int) -> str:
        return " ".join(self.sentences(n_sentences))

    def fact(self, exclude: set[str] | None = None) -> tuple[str, str]:
        """A fresh (key, 7-digit value) pair."""
        while True:
            key = self.rng.choice(LEXICON.keys)
            if not exclude or key not in exclude:
                return key, str(self.rng.randint(1_000_000, 9_999_999))


def sample_seed(*parts) -> int:
    """A stable evaluation seed (>= EVAL_SEED_BASE) for one sample, from the run seed and its coordinates."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return EVAL_SEED_BASE + int.from_bytes(digest[:6], "big")


def needle_sentence(key: str, value: str) -> str:
    return NEEDLE.format(key=key, value=value)


def passkey_prompt(key: str, garbage_before: int, garbage_after: int) -> str:
    """The PI/LongLoRA passkey prompt: the pass key line between repeats of the filler."""
    return "\n".join(
        [
            PASSKEY_TASK,
            " ".join([PASSKEY_GARBAGE] * garbage_before),
            PASSKEY_INFO.format(key=key),
            " ".join([PASSKEY_GARBAGE] * garbage_after),
            PASSKEY_QUESTION,
        ]
    )


def query_text(key: str) -> str:
    """Question plus answer prefix: the prompt ends here and the model continues with the value."""
    return QUESTION.format(key=key) + ANSWER_PREFIX.format(key=key)
