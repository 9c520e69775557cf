"""The benchmarks' own prompt suites, shipped as task data in tasks/prompts/ (installed as
harness.tasks.prompts): VBench's per-dimension prompt lists (with VBench_full_info.json's
auxiliary_info and dimension_to_folder.json, which says which list each dimension samples from) and
ChronoMagic-Bench's caption lists (1,649 prompts, and its 150-prompt subset). Both repositories are
Apache-2.0; the licence files are copied beside the prompts, and tasks/prompts/SOURCES.json records
the repository, the snapshot commit, the commit that last changed the files and each file's sha256
(tests/test_prompt_suites.py checks them). A generator run (`--model diffusers:PATH`) renders these
prompts, so its scores are on the benchmark's own suite."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

from harness.errors import UserError
from harness.generator import Prompt

ROOT = Path(__file__).parent / "prompts"


@functools.cache
def sources() -> dict:
    return json.loads((ROOT / "SOURCES.json").read_text())


def version(suite: str) -> str:
    """`<name>@<short snapshot commit>`, the suite's version as records name it."""
    return f"{suite}@{sources()[suite]['snapshot_commit'][:7]}"


@functools.cache
def _vbench_info() -> dict[str, dict]:
    """prompt -> {"dimension": [...], "auxiliary_info": {...}}; a prompt listed twice (2 of the 946
    entries: once under appearance_style, once under the overall_consistency group) gets the union."""
    out: dict[str, dict] = {}
    for e in json.loads((ROOT / "vbench" / "VBench_full_info.json").read_text()):
        entry = out.setdefault(e["prompt_en"], {"dimension": [], "auxiliary_info": {}})
        entry["dimension"] += [d for d in e.get("dimension", []) if d not in entry["dimension"]]
        entry["auxiliary_info"].update(e.get("auxiliary_info") or {})
    return out


def vbench_dimensions() -> dict[str, str]:
    """VBench's 16 dimensions -> the prompt list each samples from (dimension_to_folder.json)."""
    return json.loads((ROOT / "vbench" / "dimension_to_folder.json").read_text())


def vbench_prompts(dimension: str) -> list[Prompt]:
    """The prompt list VBench samples `dimension` from, in the file's order, each with the
    auxiliary_info VBench_full_info.json gives it (object, colour, scene, style, relation)."""
    folder = vbench_dimensions().get(dimension)
    if folder is None:
        raise UserError(f"VBench has no prompt list for dimension {dimension!r}")
    lines = (ROOT / "vbench" / "prompts_per_dimension" / f"{folder}.txt").read_text().splitlines()
    info = _vbench_info()
    out = []
    for line in (s.strip() for s in lines):
        if line:
            entry = info.get(line, {})
            out.append(
                Prompt(
                    id=line,
                    text=line,
                    meta={"dimension": entry.get("dimension", []), "auxiliary_info": entry.get("auxiliary_info", {})},
                )
            )
    return out


def chronomagic_prompts(subset: str = "1649") -> list[Prompt]:
    """ChronoMagic-Bench's captions (`videoid`, `name` = the prompt, sub- and main category): the
    full 1,649 prompts or the 150-prompt subset (ChronoMagic-Bench-150)."""
    files = {"1649": "Captions_ChronoMagic-Bench.csv", "150": "Captions_ChronoMagic-Bench-150.csv"}
    if subset not in files:
        raise UserError(f"ChronoMagic-Bench prompt subset must be one of {', '.join(files)}, got {subset!r}")
    with open(ROOT / "chronomagic" / files[subset], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        Prompt(
            id=r["videoid"],
            text=r["name"],
            meta={"sub_category": r["sub_category"], "main_category": r["main_category"]},
        )
        for r in rows
    ]
