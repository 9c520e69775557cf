"""Local data files: read with errors that name the file (and the line, for bad encodings)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UserError


def read_text(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what}: {p} is not a readable file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{what}: {p} line {line} is not valid UTF-8 ({e.reason})") from None
    if not text.strip():
        raise UserError(f"{what}: {p} is empty")
    return text


def sentences(text: str) -> list[str]:
    """Split prose into sentences (at ., ! or ? followed by white space); whitespace collapsed."""
    parts = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text).strip())
    return [p for p in parts if p]
