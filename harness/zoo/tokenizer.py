"""The zoo's tokenizers, saved in Hugging Face format (load with AutoTokenizer).

v2 (the current recipe, ZOO_VERSION 2): a byte-level BPE of 4,096 tokens trained with the
`tokenizers` library on the zoo's own training text (the synthetic corpus and the generators of
harness.zoo.generators), so any UTF-8 text encodes without an unknown token and decodes exactly.
Digits are split one per token (as Llama's tokenizer does), so a 7-digit value is 7 tokens. Its
post-processor puts <s> (BOS) before every text, as Llama's does: that is what lm-eval's HFLM gets
by default (tok_encode calls tokenizer.encode with the tokenizer's own special tokens, and rolling
log-likelihoods start from prefix_token_id, the BOS), what harness.lm.LM.prompt_prefix() puts
before every prompt, and what harness.zoo.rows puts at the start of every training row: one BOS
convention. The trained tokenizer is committed (tokenizer_v2.json), and `train_bpe()` rebuilds the
same file from the same seeded text (tests/test_zoo_tokenizer.py checks that).

v1 (the committed round-1 models, which keep their own tokenizer.json): word-level. One token per pseudo-word (keys included), a word and a following colon are one token ("▁key:"),
digits in chunks of up to three with the leading space kept on the first ("▁123", "456", "7"), so
a 7-digit value is three tokens and "key: value" puts the value's first token right after the
key's. One token per punctuation mark. A word carries its leading space ("▁word"), so decoding
is exact. Text outside the synthetic vocabulary maps to <unk>.
"""

from __future__ import annotations

import json
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


def build_word_tokenizer():
    """The v1 word-level tokenizer (the round-1 models were trained with it)."""
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


BPE_FILE = Path(__file__).parent / "tokenizer_v2.json"
BPE_VOCAB = 4096  # embeddings 4,096 x 192: below v1's 4,548 x 192, within the zoo's 48 MB
BPE_SPECIALS = ["<pad>", "<s>", "</s>"]  # no <unk>: byte-level, every string encodes
BPE_TEXT_SENTENCES = 60_000  # ~2.6 MB of training text: the merges settle, training takes seconds


def bpe_training_text() -> list[str]:
    """The tokenizer's training text, fixed: the generators' text from seed 0 (a training seed)
    plus the task templates, so the prompts' framing words get their own merges."""
    from harness.zoo.generators import training_text

    templates = [PREAMBLE, NEEDLE, QUESTION, ANSWER_PREFIX, PASSKEY_TASK, PASSKEY_GARBAGE, PASSKEY_INFO]
    templates += [PASSKEY_QUESTION, VT_WORDS]
    framing = "\n".join(t.replace("{key}", "key").replace("{value}", "1234567") for t in templates)
    return training_text(BPE_TEXT_SENTENCES, seed=0).split("\n") + [framing] * 200


def train_bpe():
    """Train the v2 byte-level BPE from its fixed text (deterministic: same text, same merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=BPE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        show_progress=False,
    )
    tk.train_from_iterator(bpe_training_text(), trainer=trainer)
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tk


def build_tokenizer(version: int | None = None):
    """The tokenizer of a zoo generation (default: the current one, ZOO_VERSION)."""
    from harness.zoo.registry import ZOO_VERSION

    version = ZOO_VERSION if version is None else version
    if version == 1:
        return build_word_tokenizer()
    if version != 2:
        raise ValueError(f"no zoo tokenizer for version {version}")
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(BPE_FILE.read_text()),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,  # decoding must give the text back byte for byte
    )


def write_bpe_file() -> None:
    """Regenerate tokenizer_v2.json (`python -m harness.zoo.tokenizer`)."""
    BPE_FILE.write_text(json.dumps(json.loads(train_bpe().to_str()), ensure_ascii=False, indent=1) + "\n")


def save_tokenizer(folder: Path) -> None:
    build_tokenizer().save_pretrained(str(folder))


if __name__ == "__main__":
    write_bpe_file()
