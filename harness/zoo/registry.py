"""The committed zoo: harness/zoo/models/<name>/ holds an HF-format model and its card.

`card.json` is the machine-readable card (architecture, data, seed, steps, losses, measured
evaluation results, the weights' sha256); `README.md` is the same card for people."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UserError, nearest

ZOO_DIR = Path(__file__).parent / "models"

# The zoo's generation: the recipe (tokenizer, BOS convention, training data) that `harness zoo
# train` follows now. 1: round 1 (word-level tokenizer, no BOS, synthetic corpus only); 2: byte-level
# BPE, BOS first, varied data (issue 24). A model records the version it was trained with (card and
# config.json `zoo_version`; none recorded means 1), and so does every result record made with it,
# so results of two generations never mix silently in one leaderboard row or report table.
ZOO_VERSION = 2


def version_of(card_or_config) -> int:
    """The zoo generation of a card (dict) or a model config (object); round-1 models recorded none."""
    if isinstance(card_or_config, dict):
        return int(card_or_config.get("zoo_version") or 1)
    return int(getattr(card_or_config, "zoo_version", None) or 1)


def generation_mark(model: dict) -> str:
    """ " (zoo v1)" for a record's model from an older zoo generation than the current one, else ""."""
    if not (model.get("zoo") or str(model.get("id", "")).startswith("zoo:")):
        return ""
    v = version_of(model)
    return f" (zoo v{v})" if v < ZOO_VERSION else ""


def model_key(model: dict) -> str:
    """A record's model as the leaderboard and reports group it: the id, marked when it is a zoo
    model of an older generation (`zoo:tiny-llama (zoo v1)`)."""
    return str(model["id"]) + generation_mark(model)


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
