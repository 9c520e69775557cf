"""The committed zoo: harness/zoo/models/<name>/ holds an HF-format model and its card.

`card.json` is the machine-readable card (architecture, data, seed, steps, losses, measured
evaluation results, the weights' sha256); `README.md` is the same card for people."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UserError, nearest

ZOO_DIR = Path(__file__).parent / "models"


def names() -> list[str]:
    return sorted(p.parent.name for p in ZOO_DIR.glob("*/card.json"))


def card(name: str) -> dict:
    path = ZOO_DIR / name / "card.json"
    if not path.is_file():
        raise UserError(
            f"unknown zoo model {name!r}.{nearest(name, names())} "
            f"Available: {', '.join(names()) or 'none (run `harness zoo train NAME`)'}"
        )
    return json.loads(path.read_text())


def verified_folder(name: str) -> tuple[Path, dict]:
    """The model's folder and card; the loader checks the weights against card['sha256']."""
    info = card(name)
    folder = ZOO_DIR / name
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"zoo model {name}: {folder / 'model.safetensors'} is missing")
    return folder, info
