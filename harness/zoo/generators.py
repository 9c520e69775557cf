"""Text generators of the zoo's v2 training data, beside the synthetic corpus (harness.synthetic).

Why: a model trained on one closed vocabulary learns retrieval as a property of *that* vocabulary
and collapses on a haystack of ordinary prose (issue 24: needle accuracy 0.00). So v2 rows draw
their filler from several sources -- the synthetic corpus, prose-like English built from a word
list with sentence structure, text in other scripts, random character noise -- and their keys and
values from random strings as well as corpus words, so that the look-up has to work on whatever
text surrounds it. Every generator is a seeded `random.Random`; no text here is evaluation data
(the needle task's prose haystack is a hand-written file under tests/data, not this word list).
"""

from __future__ import annotations

import random
import string

from harness.synthetic import EVAL_SEED_BASE, Corpus

_NOUNS = """
time year people way day man woman child world life hand part place case week company system
program question work government number night point home water room mother area money story fact
month lot right study book eye job word business issue side kind head house service friend father
power hour game line end member law car city community name president team minute idea kid body
information back parent face others level office door health person art war history party result
change morning reason research girl guy moment air teacher force education foot boy age policy
music market sense nation plan college interest death experience effect class control care field
development role effort rate heart drug show leader light voice wife police mind price report
decision son view relationship town road arm difference value building action model season society
tax director position player record paper space ground form event official matter center couple
site project activity star table need court oil situation cost industry figure street image phone
data picture practice piece land product doctor wall patient worker news test movie north love
support technology step baby computer type attention film tree source organization hair window
evidence population garden river kitchen bread coffee letter bridge island forest village
winter summer autumn spring weather storm rain snow wind mountain valley lake sea beach harbor
ship train station ticket journey map library museum market shop bakery farmer fisherman sailor
painter singer student neighbor stranger guest soldier nurse engineer clerk driver writer poet
chair lamp clock mirror blanket pillow basket bottle cup plate spoon knife candle box bag coat
shoe hat glove scarf umbrella bicycle wagon horse dog cat bird fish cow sheep goat chicken apple
orange lemon potato onion carrot cheese butter soup salt sugar honey tea milk egg rice bean
""".split()

_ADJECTIVES = """
good new first last long great little own other old right big high different small large next
early young important few public bad same able late hard major better economic strong possible
whole free military true federal international full special easy clear recent certain personal
open red difficult available likely short single medical current wrong private past foreign fine
common poor natural significant similar hot dead central happy serious ready simple left physical
general environmental financial blue democratic dark various entire close legal religious cold
final main green nice huge popular traditional cultural quiet busy narrow wide bright gentle
heavy light warm cool wet dry soft loud calm brave careful curious eager friendly honest kind
lazy lucky proud shy strange tired wise wild yellow brown grey silver golden wooden stone empty
crowded ancient modern rural distant nearby hidden familiar sudden steady patient useful tiny
""".split()

_VERBS = """
asked worked seemed felt tried left called kept began helped talked turned started showed heard
played ran moved liked lived believed held brought happened wrote provided sat stood lost paid
met included continued learned changed led understood watched followed stopped created spoke read
spent grew opened walked won offered remembered loved considered appeared bought waited served
died sent expected built stayed fell reached killed remained suggested raised passed sold
required reported decided pulled carried painted cleaned cooked baked fixed visited
climbed crossed opened closed washed planted gathered borrowed noticed wondered explained described
answered repeated returned arrived traveled finished counted collected discovered designed
""".split()

_ADVERBS = """
quickly slowly quietly carefully suddenly finally nearly almost often always sometimes rarely
again soon already still together early later today yesterday gladly easily gently loudly
""".split()

_NAMES = """
Anna Ben Clara David Elena Frank Grace Henry Iris James Kate Leo Maria Nora Oscar Paul Rosa Sam
Tom Uma Victor Wendy Alice Peter Laura Martin Helen George Julia Daniel Sofia Robert Emma Lucas
""".split()

_PLACES = """
London Paris Berlin Madrid Rome Vienna Prague Lisbon Dublin Oslo Boston Chicago Denver Seattle
Toronto Sydney Cairo Delhi Tokyo Lima
""".split()

_PREPS = "in on at with from near under over by behind beside across through along around".split()

_PROSE_TEMPLATES = (
    "The {adj} {noun} {verb} {prep} the {noun2}.",
    "{name} {verb} the {adj} {noun} {adv}.",
    "When {name} {verb} the {noun}, the {noun2} {verb2} {adv}.",
    "In {place}, the {noun} was {adj} and the {noun2} was {adj2}.",
    "{name} and {name2} {verb} {prep} the {adj} {noun} after the {noun2}.",
    "It was a {adj} {noun}, and nobody {verb} the {noun2} {prep} the {noun3}.",
    "Because the {noun} was {adj}, {name} {verb} {adv} {prep} the {noun2}.",
    "Every {noun} in {place} {verb} a {adj} {noun2}.",
    "{name} said that the {noun} {verb} {prep} the {adj} {noun2}.",
    "The {noun} of the {noun2} {verb} {adv}, but the {noun3} was still {adj}.",
    "Why had the {adj} {noun} {verb} {prep} the {noun2}?",
    "After {number} {noun}s, {name} {verb} the {noun2} {prep} {place}.",
)

# Other scripts (issue 24's "foreign" filler): syllables of Latin with accents, Cyrillic, Greek,
# Arabic, Devanagari, Han and kana, Hangul, plus a few emoji, so every script's bytes appear.
_SCRIPTS = (
    "á é í ó ú à è ç ñ ö ü ß ø å œ ã õ â ê ô",
    "а б в г д е ж з и к л м н о п р с т у ф х ц ч ш ы э ю я",
    "α β γ δ ε ζ η θ ι κ λ μ ν ξ ο π ρ σ τ υ φ χ ψ ω",
    "ا ب ت ث ج ح خ د ذ ر ز س ش ص ض ط ع غ ف ق ك ل م ن ه و ي",
    "क ख ग घ च छ ज झ ट ठ ड ढ त थ द ध न प फ ब भ म य र ल व स ह",
    "的 一 是 不 了 人 我 在 有 他 这 中 大 来 上 国 个 到 说 们 为 子 和 你 地 出 道 也 时 年",
    "あ い う え お か き く け こ さ し す せ そ た ち つ て と な に ぬ ね の",
    "가 나 다 라 마 바 사 아 자 차 카 타 파 하 한 국 어 글",
    "😀 🎉 🌍 🚀 ✨ 🍎 🐍 📚 ❤ ✓",
)
_SCRIPT_CHARS = tuple(tuple(s.split()) for s in _SCRIPTS)
_NOISE = string.ascii_letters + string.digits + string.punctuation + "  "
_KEY_CHARS = string.ascii_lowercase + string.digits + "-_"


class Prose:
    """Prose-like English: a word list put into sentence templates; a paragraph keeps a small topic
    (as the synthetic corpus does) so the text has some local regularity to learn."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self._topic()

    def _topic(self) -> None:
        r = self.rng
        self.topic = {
            "noun": r.sample(_NOUNS, 30),
            "adj": r.sample(_ADJECTIVES, 15),
            "verb": r.sample(_VERBS, 15),
            "adv": r.sample(_ADVERBS, 6),
            "name": r.sample(_NAMES, 4),
            "place": r.sample(_PLACES, 2),
        }

    def sentence(self) -> str:
        r, t = self.rng, self.topic
        if r.random() < 0.05:
            self._topic()
        fill = {"prep": r.choice(_PREPS), "number": str(r.randint(2, 999))}
        for slot, words in t.items():
            for suffix in ("", "2", "3"):
                fill[slot + suffix] = r.choice(words)
        return r.choice(_PROSE_TEMPLATES).format(**fill)


class Foreign:
    """Words of random syllables in one script per sentence, with sentence punctuation."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def sentence(self) -> str:
        r = self.rng
        chars = r.choice(_SCRIPT_CHARS)
        words = ["".join(r.choice(chars) for _ in range(r.randint(1, 4))) for _ in range(r.randint(3, 10))]
        text = " ".join(words)
        return text[0].upper() + text[1:] + r.choice(".。!?")


class Noise:
    """Random printable characters: filler with no structure at all."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def sentence(self) -> str:
        r = self.rng
        return "".join(r.choice(_NOISE) for _ in range(r.randint(10, 60))).strip() + "."


SOURCES = {"corpus": Corpus, "prose": Prose, "foreign": Foreign, "noise": Noise}


class Filler:
    """Haystack sentences from one source per row, chosen with the given weights."""

    def __init__(self, seed: int, weights: dict[str, float]):
        unknown = set(weights) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown filler sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
        self.rng = random.Random(seed)
        self.names = [n for n in SOURCES if weights.get(n, 0) > 0]
        self.weights = [weights[n] for n in self.names]
        # below EVAL_SEED_BASE like every training seed, so no training corpus text is evaluation text
        self.sources = {n: SOURCES[n]((seed + i + 11) % EVAL_SEED_BASE) for i, n in enumerate(self.names)}

    def source(self):
        """A sentence function of one source (a row's haystack keeps to one source)."""
        return self.sources[self.rng.choices(self.names, self.weights)[0]].sentence


def random_key(rng: random.Random, corpus: Corpus) -> str:
    """A needle key: a corpus key word (the needle task's own kind), an English word, a random
    lowercase string, or a random string with digits and dashes (a code name)."""
    kind = rng.random()
    if kind < 0.3:
        return corpus.fact()[0]
    if kind < 0.5:
        return rng.choice(_NOUNS) + rng.choice(["", "-" + rng.choice(_ADJECTIVES)])
    if kind < 0.8:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 12)))
    return "".join(rng.choice(_KEY_CHARS) for _ in range(rng.randint(3, 10))).strip("-_") or "k"


def random_value(rng: random.Random) -> str:
    """A needle value: mostly 7 digits (the needle task's), else a random number or letter code."""
    kind = rng.random()
    if kind < 0.7:
        return str(rng.randint(1_000_000, 9_999_999))
    if kind < 0.85:
        return str(rng.randint(0, 10 ** rng.randint(1, 9)))
    chars = string.ascii_letters + string.digits
    return "".join(rng.choice(chars) for _ in range(rng.randint(3, 10)))


def training_text(n_sentences: int, seed: int = 0) -> str:
    """Text of every source (for the tokenizer's training): one paragraph per source in turn."""
    sources = {n: cls(seed + i) for i, (n, cls) in enumerate(SOURCES.items())}
    turn = ("corpus", "prose", "corpus", "prose", "foreign", "noise")  # most merges for English-like text
    parts = [" ".join(sources[turn[i % len(turn)]].sentence() for _ in range(20)) for i in range(n_sentences // 20)]
    return "\n".join(parts)
