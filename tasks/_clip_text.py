"""CLIP's text side in plain PyTorch, and the whole CLIP model (image tower + text tower +
logit scale) loading OpenAI / open_clip checkpoints.

Tokenizer: OpenAI CLIP's byte-level BPE (clip/simple_tokenizer.py, also open_clip's and ViCLIP's):
49,152 − 256 − 2 merges from `bpe_simple_vocab_16e6.txt.gz` (vendored in tasks/data with its MIT
license), vocabulary = 256 byte symbols, the same with `</w>`, the merges, `<|startoftext|>` (49406)
and `<|endoftext|>` (49407). Text cleaning is ftfy-free: OpenAI's `basic_clean` runs
ftfy.fix_text (whose default ends in NFC normalisation) and html.unescape twice; here NFC and the
double unescape are applied, ftfy's mojibake repair is not (it changes only mis-decoded text).
Then whitespace runs become one space and the text is lower-cased. The pre-tokenising pattern
(`<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`)
is matched by a scanner on unicodedata categories, so the `regex` package is not needed.

Text tower (clip/model.py `encode_text`): token + positional embedding, a causal transformer of
QuickGELU residual blocks, ln_final, the features at the end-of-text token (the largest id of
each row) times `text_projection`."""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from harness.errors import UserError
from harness.tasks._backbones import ClipVisual, _ClipTransformer, load_checked, load_state

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


# -- the text tower ----------------------------------------------------------------------------
class ClipText(nn.Module):
    """CLIP's text encoder. OpenAI ViT-B/32: width 512, 8 heads, 12 layers, output 512; ViT-L/14:
    width 768, 12 heads, 12 layers, output 768; ViCLIP-L/14: as L/14 with context 32. Parameter
    names are the checkpoints' (`token_embedding.weight`, `positional_embedding`,
    `transformer.resblocks.*`, `ln_final.*`, `text_projection`)."""

    def __init__(self, width=512, layers=12, heads=8, out=512, context=77, vocab=49408):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.transformer = _ClipTransformer(width, layers, heads, causal=True)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, out) * width**-0.5)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer.resblocks(x.transpose(0, 1)).transpose(0, 1))
        return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection


# -- the whole CLIP model ------------------------------------------------------------------------
TEXT_B32 = dict(width=512, layers=12, heads=8, out=512)
TEXT_L14 = dict(width=768, layers=12, heads=12, out=768)
# ints OpenAI's TorchScript archives keep next to the weights (clip.build_model drops them)
_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


class Clip(nn.Module):
    """CLIP (OpenAI / open_clip layout: `visual.*`, the text tower's names at top level,
    `logit_scale`). forward(images, ids) -> (logits_per_image, logits_per_text) as clip.model.CLIP:
    exp(logit_scale) · cos(image, text)."""

    def __init__(self, visual: dict, text: dict):
        super().__init__()
        self.visual = ClipVisual(**visual)
        self.text = ClipText(**text)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # ln(100), OpenAI's released value

    def load_checkpoint(self, state: dict, task: str, path) -> "Clip":
        """Load an OpenAI/open_clip state dict (TorchScript ints dropped, `module.` stripped)."""
        state = {k.removeprefix("module."): v for k, v in state.items() if k not in _NON_WEIGHTS}
        mapped = {}
        for k, v in state.items():
            mapped[k if k.startswith(("visual.", "logit_scale")) else f"text.{k}"] = v
        return load_checked(self, mapped, task, path, "the CLIP layout")

    def encode_image(self, x):
        return self.visual(x)

    def encode_text(self, ids):
        return self.text(ids)

    def forward(self, images, ids):
        img = nn.functional.normalize(self.encode_image(images), dim=-1)
        txt = nn.functional.normalize(self.encode_text(ids), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()


def load_clip(path, visual: dict, text: dict, task: str) -> Clip:
    return Clip(visual, text).load_checkpoint(load_state(path), task, path)
