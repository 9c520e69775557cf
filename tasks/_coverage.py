"""The coverage of VBench, VBench-I2V, ChronoMagic-Bench and FVD: every dimension of each benchmark
(its own list, below) against the registered tasks that score it. Each video task declares
`benchmark_dimension`, `backend` and `fidelity` (tasks/_generation.py); a dimension no task scores
must say why here, so the table has no silent gaps. `harness docs` writes the page through the
`harness.docs` entry point (pyproject), so the core knows nothing of these benchmarks."""

from __future__ import annotations

from harness import registry
from harness.docpages import HEADER, cell, code
from harness.tasks._generation import FIDELITY

# each benchmark's dimensions in its own order (VBench: scripts/constant.py; VBench-I2V:
# vbench2_beta_i2v; ChronoMagic-Bench: its leaderboard's columns, README and get_uploaded_json.py)
BENCHMARKS = {
    "vbench": (
        "subject_consistency",
        "background_consistency",
        "temporal_flickering",
        "motion_smoothness",
        "dynamic_degree",
        "aesthetic_quality",
        "imaging_quality",
        "object_class",
        "multiple_objects",
        "human_action",
        "color",
        "spatial_relationship",
        "scene",
        "appearance_style",
        "temporal_style",
        "overall_consistency",
    ),
    "vbench-i2v": ("i2v_subject", "i2v_background", "camera_motion"),
    "chronomagic": ("mtscore", "chscore", "gpt4o_mtscore", "umt_fvd", "umtscore"),
    "fvd": ("fvd",),
}

# dimensions no registered task scores: (status, backend, reason)
NO_TASK = {
    "chronomagic:gpt4o_mtscore": (
        "unavailable",
        "GPT-4o (OpenAI's hosted API)",
        "GPT4o-MTScore asks GPT-4o to rate 8 frames of each video on a 1-5 metamorphic rubric: it needs a "
        "hosted model behind a paid API, and the harness runs offline with local weights only",
    ),
    "chronomagic:umt_fvd": (
        "unavailable",
        "UMT ViT features (ChronoMagic-Bench UMT/)",
        "not implemented here: FVD on UMT features against ChronoMagic-Bench's reference videos (not shipped)",
    ),
    "chronomagic:umtscore": (
        "unavailable",
        "UMT video-text retrieval model (ChronoMagic-Bench UMT/)",
        "not implemented here: needs the UMT retrieval checkpoint and its text encoder",
    ),
}


def _tasks_by_dimension() -> dict[str, list]:
    registry.load()
    out: dict[str, list] = {}
    for name, cls in sorted(registry.TASKS.items()):
        dim = getattr(cls, "benchmark_dimension", None)
        if dim:
            out.setdefault(dim, []).append(cls)
    return out


def rows() -> list[dict]:
    """One row per benchmark dimension: tasks, backend, status, the generator's prompt suite."""
    by_dim = _tasks_by_dimension()
    unknown = set(by_dim) - {f"{b}:{d}" for b, dims in BENCHMARKS.items() for d in dims}
    if unknown:
        raise ValueError(f"tasks name dimensions no benchmark lists: {sorted(unknown)}")
    out = []
    for bench, dims in BENCHMARKS.items():
        for dim in dims:
            key = f"{bench}:{dim}"
            classes = by_dim.get(key, [])
            if classes:
                for cls in classes:
                    if cls.fidelity not in FIDELITY:
                        raise ValueError(f"task {cls.name}: fidelity {cls.fidelity!r} is not one of {FIDELITY}")
                    out.append(
                        {
                            "benchmark": bench,
                            "dimension": dim,
                            "task": cls.name,
                            "backend": cls.backend,
                            "status": cls.fidelity,
                            "prompts": _prompts(cls),
                        }
                    )
            elif key in NO_TASK:
                status, backend, reason = NO_TASK[key]
                out.append(
                    {
                        "benchmark": bench,
                        "dimension": dim,
                        "task": None,
                        "backend": backend,
                        "status": status,
                        "prompts": None,
                        "reason": reason,
                    }
                )
            else:
                raise ValueError(f"{key}: no task scores it and NO_TASK gives no reason")
    return out


def _prompts(cls) -> str | None:
    """The prompt list a generator renders for the task (its size and version), or None."""
    suite = getattr(cls, "suite_prompts", None)
    if suite is None:
        return None
    found = cls().suite_prompts()
    return f"{found[0]} ({len(found[1])} prompts)" if found else None


def page() -> str:
    lines = [
        HEADER.format(src="the registry (each video task's benchmark_dimension, backend, fidelity)").rstrip(),
        "",
        "# Video benchmark coverage",
        "",
        "Every dimension of VBench, VBench-I2V, ChronoMagic-Bench and FVD, and what scores it here. Status: "
        "**faithful** — the benchmark's own rule on its own model (given the weights file); **proxy** — the "
        "benchmark's rule on a stand-in model, values not comparable with published ones; **external** — the "
        "benchmark's rule on outputs you compute with the official code; **unavailable** — not scored here "
        "(the reason is given). *Generator prompts*: the benchmark's own prompt list that `--model "
        "diffusers:PATH` renders for the task (shipped in `tasks/prompts/`, Apache-2.0, source and commit in "
        "`tasks/prompts/SOURCES.json`); – where no list is shipped (VBench-I2V needs its image suite).",
        "",
        "| benchmark | dimension | task | status | backend | generator prompts |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows():
        backend = r["backend"] + (f" — {r['reason']}" if r.get("reason") else "")
        lines.append(
            f"| {r['benchmark']} | {r['dimension']} | {code(r['task']) or '–'} | {r['status']} | {cell(backend)} "
            f"| {cell(r['prompts'] or '–')} |"
        )
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """The `harness.docs` entry point: {path under docs/: content}."""
    return {"reference/video-coverage.md": page()}
