"""Word-level tokenizer of the zoo models, saved in Hugging Face format (loads with AutoTokenizer).

One token per pseudo-word (keys included), a word and a following colon are one token ("▁key:"),
digits in chunks of up to three with the leading space kept on the first ("▁123", "456", "7"), so
a 7-digit value is three tokens and "key: value" puts the value's first token right after the
key's. One token per punctuation mark. A word carries its leading space ("▁word"), so decoding
is exact. Text outside the synthetic vocabulary maps to <unk>.
"""

from __future__ import annotations

from pathlib import Path

from harness.synthetic import (
    _FUNCTION_WORDS,
    ANSWER_PREFIX,
    LEXICON,
    NEEDLE,
    PASSKEY_GARBAGE,
    PASSKEY_INFO,
    PASSKEY_QUESTION,
    PASSKEY_TASK,
    PREAMBLE,
    QUESTION,
    VT_WORDS,
)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
_PUNCT = list(".,:;?!'\"()-=\n▁") + ["s"]
_SPLIT = r"▁?[A-Za-z]+:?|▁?\d{1,3}|[\s\S]"


def vocabulary() -> list[str]:
    template = " ".join(
        [
            PREAMBLE,
            NEEDLE,
            QUESTION,
            ANSWER_PREFIX,
            PASSKEY_TASK,
            PASSKEY_GARBAGE,
            PASSKEY_INFO,
            PASSKEY_QUESTION,
            VT_WORDS,
        ]
    ).replace("{key}", " ")
    framing = {w.strip(".,:?!\n").replace("(s)", "") for w in template.split()} | set(_FUNCTION_WORDS)
    framing.discard("")
    vocab = SPECIALS + _PUNCT + [str(i) for i in range(10)]
    digits = [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)] + [f"{i:03d}" for i in range(1000)]
    vocab += digits[10:] + ["▁" + d for d in digits]
    words: dict[str, None] = {}
    for w in sorted(framing):  # sentence-initial and after-newline forms exist for these
        for form in (w, w.capitalize()):
            for variant in (form, "▁" + form, form + ":", "▁" + form + ":"):
                words.setdefault(variant, None)
    for w in LEXICON.names:  # proper nouns, may start a text
        words.setdefault(w.capitalize(), None)
        words.setdefault("▁" + w.capitalize(), None)
    for group in (LEXICON.nouns, LEXICON.adjectives, LEXICON.verbs, LEXICON.adverbs):
        for w in group:
            words.setdefault("▁" + w, None)
    for w in LEXICON.keys:
        words.setdefault("▁" + w, None)
        words.setdefault("▁" + w + ":", None)
    return vocab + [w for w in words if w not in vocab]


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=1 << 30,
    )


def save_tokenizer(folder: Path) -> None:
    build_tokenizer().save_pretrained(str(folder))
