"""OpenAI CLIP's text tokenizer in plain Python (clip/simple_tokenizer.py, also open_clip's and
ViCLIP's): byte-level BPE with 49,152 − 256 − 2 merges from `bpe_simple_vocab_16e6.txt.gz`
(vendored in backbones/data with its MIT license), vocabulary = 256 byte symbols, the same with
`</w>`, the merges, `<|startoftext|>` (49406) and `<|endoftext|>` (49407). Text cleaning is
ftfy-free: OpenAI's `basic_clean` runs ftfy.fix_text (whose default ends in NFC normalisation) and
html.unescape twice; here NFC and the double unescape are applied, ftfy's mojibake repair is not
(it changes only mis-decoded text). Then whitespace runs become one space and the text is
lower-cased. The pre-tokenising pattern
(`<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`)
is matched by a scanner on unicodedata categories, so the `regex` package is not needed."""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch

from harness.errors import UserError

BPE_FILE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
SPECIAL = ("<|startoftext|>", "<|endoftext|>")
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable Latin-1 bytes map to
    themselves, the other 68 to chr(256 + k))."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    cat = unicodedata.category(ch)
    return "letter" if cat[0] == "L" else "number" if cat[0] == "N" else "other"


def pre_tokenize(text: str) -> list[str]:
    """The pieces OpenAI's pattern finds, left to right (first matching alternative at each
    position; whitespace is skipped)."""
    out, i, n = [], 0, len(text)
    while i < n:
        for special in SPECIAL:
            if text.startswith(special, i):
                out.append(special)
                i += len(special)
                break
        else:
            contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
            kind = _kind(text[i])
            if contraction:
                out.append(contraction)
                i += len(contraction)
            elif kind == "space":
                i += 1
            elif kind == "number":  # [\p{N}]: one character at a time
                out.append(text[i])
                i += 1
            else:  # [\p{L}]+ or [^\s\p{L}\p{N}]+
                j = i + 1
                while j < n and _kind(text[j]) == kind:
                    j += 1
                out.append(text[i:j])
                i = j
    return out


def clean(text: str) -> str:
    text = html.unescape(html.unescape(unicodedata.normalize("NFC", text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    def __init__(self, bpe_path: str | Path = BPE_FILE):
        try:
            lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        except OSError as e:
            raise UserError(f"CLIP tokenizer: cannot read the BPE merges {bpe_path}: {e}") from None
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL)
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SPECIAL[0]], self.encoder[SPECIAL[1]]
        self.cache = {s: [s] for s in SPECIAL}

    def bpe(self, token: str) -> list[str]:
        """Merge the lowest-ranked adjacent pair until none is in the merge table."""
        if token in self.cache:
            return self.cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        table = bytes_to_unicode()
        ids = []
        for piece in pre_tokenize(clean(text)):
            symbols = "".join(table[b] for b in piece.encode("utf-8"))
            ids += [self.encoder[t] for t in self.bpe(symbols)]
        return ids

    def decode(self, ids) -> str:
        inverse = {v: k for k, v in bytes_to_unicode().items()}
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(inverse[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts, context_length: int = 77, truncate: bool = False) -> torch.Tensor:
        """clip.tokenize: [sot] + ids + [eot], zero-padded to context_length. Too long: an error,
        or with truncate=True the first context_length ids with the last one set to eot (ViCLIP)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot] + self.encode(text) + [self.eot]
            if len(ids) > context_length:
                if not truncate:
                    raise UserError(
                        f"text {text[:60]!r} is {len(ids)} tokens, longer than CLIP's context of {context_length}"
                    )
                ids = ids[:context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@lru_cache(maxsize=2)
def tokenizer(bpe_path: str = str(BPE_FILE)) -> ClipTokenizer:
    return ClipTokenizer(bpe_path)
