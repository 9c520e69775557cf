"""Grid files for `harness sweep`: parse and validate the YAML, expand it into cells (Spec).

    out: results                 # results folder (--out overrides)
    models: [zoo:tiny-llama]     # defaults for every block: models, seeds, limit, task_args, method_args
    fit:                         # fit stages to run first, once (as `harness fit`)
      - {method: longrope, task: needle, task_args: {context_length: [512, 1024, 2048]}}
    runs:                        # blocks: tasks x methods x models x seeds x grid
      - tasks: [needle]
        methods: [baseline, yarn]
        task_args: {context_length: [512, 1024], samples_per_depth: 5}   # as --task-arg (a list = one list value)
        grid: {method.yarn.factor: [2, 4], task.depths: [5, 10]}         # crossed: one cell per combination
        seeds: [0, 1]
        fit_seed: [0, 1]         # the fits the methods load (harness fit --seed), crossed like seeds
        loading: {dtype: bfloat16, attn_implementation: eager}   # as eval's loading flags (harness.loading)
        batch_size: auto         # as eval's --batch-size (default 8; auto measures for long prompts)

Within a block, task_args / method_args follow `harness eval`: `key` goes to every task or method
that has it, `name.key` to one. A `fit:` entry's `fit_seed` (or `seed`; a number or a list) says
which fit seeds to make; without one, it is made at every fit seed of the cells whose methods
load it, so a grid with `fit_seed: [0, 1, 2]` fits three times before its cells run."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from harness import params
from harness.errors import UserError
from harness.loading import LoadOptions

BLOCK_KEYS = {
    "tasks",
    "methods",
    "models",
    "seeds",
    "fit_seed",
    "limit",
    "task_args",
    "method_args",
    "grid",
    "loading",
    "batch_size",
}
TOP_KEYS = BLOCK_KEYS - {"tasks", "methods", "grid"} | {"out", "fit", "runs"}
FIT_KEYS = {"method", "task", "model", "task_args", "method_args", "seed", "fit_seed"}
SEED_KEYS = ("seeds", "fit_seed", "seed")


def _err(path, where: str, msg: str) -> UserError:
    return UserError(f"grid {path}: {where}: {msg}")


def arg_value(v) -> str:
    """A YAML value as the CLI's K=V text: a list becomes one comma-separated list value."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return ",".join(arg_value(x) for x in v)
    if v is None:
        return "none"
    return str(v)


def _names(block: dict, key: str, path, where: str) -> list:
    v = block.get(key)
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return [v]
    if not isinstance(v, list) or not v:
        raise _err(path, where, f"'{key}' must be a non-empty list")
    if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        raise _err(
            path, where, f"'{key}' must list names (strings)" if key not in SEED_KEYS else f"{key} must be integers"
        )
    return v


def seeds_of(block: dict, key: str, path, where: str) -> list[int]:
    """A seed key's values (a number or a list of them), each in [0, 2**63 - 1]."""
    seeds = _names(block, key, path, where) if key in block else [0]
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= params.SEED_MAX for s in seeds):
        raise _err(path, where, f"{key} must be integers in [0, 2**63 - 1], got {seeds!r}"[:200])
    return seeds


def _args(block: dict, key: str, path, where: str) -> dict[str, str]:
    v = block.get(key) or {}
    if not isinstance(v, dict):
        raise _err(path, where, f"'{key}' must be a mapping of parameter: value")
    return {str(k): arg_value(x) for k, x in v.items()}


def load_grid(path) -> dict:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"grid {path}: cannot read ({e.__class__.__name__}: {e})") from None
    try:
        grid = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"grid {path}:{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(grid, dict):
        raise UserError(f"grid {path}: expected a mapping with a 'runs' list")
    unknown = set(grid) - TOP_KEYS
    if unknown:
        raise UserError(f"grid {path}: unknown key(s) {sorted(unknown)} (allowed: {sorted(TOP_KEYS)})")
    if not isinstance(grid.get("runs"), list) or not grid["runs"]:
        raise UserError(f"grid {path}: 'runs' must be a non-empty list of blocks")
    return grid


@dataclass
class Spec:
    """Everything one cell needs, as plain data (it is pickled to workers and Slurm jobs)."""

    tasks: list
    methods: list
    model: str | None
    task_args: dict
    method_args: dict
    seed: int
    limit: int | None
    index: int  # which cell of resolve(tasks, methods, ...) this is
    out: str
    device: str = "auto"
    batch_size: int | str = 8  # or "auto"
    threads: int | None = None
    loading: dict | None = None  # harness.loading.LoadOptions fields
    label: str = ""
    path: str = ""
    attempts: int = 0
    reasons: list = field(default_factory=list)
    outcome: str = ""  # the last attempt's status: done, skipped, refused ("" while failing)
    fit_seed: int = 0  # the seed of the fits its methods load (harness eval --fit-seed)
    fit_names: list = field(default_factory=list)  # the fits its methods load (Method.fit_name or name)


def expand(grid: dict, path, out: str, device: str = "auto", batch_size: int = 8) -> list[Spec]:
    """All cells of the grid, validated (names, kinds, parameters) before anything runs."""
    from harness import runner

    specs = []
    for b, block in enumerate(grid["runs"]):
        where = f"runs[{b}]"
        if not isinstance(block, dict):
            raise _err(path, where, "a block must be a mapping")
        unknown = set(block) - BLOCK_KEYS
        if unknown:
            raise _err(path, where, f"unknown key(s) {sorted(unknown)} (allowed: {sorted(BLOCK_KEYS)})")
        merged = {k: grid[k] for k in ("models", "seeds", "fit_seed", "limit", "loading", "batch_size") if k in grid}
        merged.update(block)
        tasks = [str(t) for t in _names(merged, "tasks", path, where)]
        methods = [str(m) for m in _names(merged, "methods", path, where)]
        models = [str(m) for m in _names(merged, "models", path, where)] if "models" in merged else [None]
        seeds = seeds_of(merged, "seeds", path, where)
        fit_seeds = seeds_of(merged, "fit_seed", path, where)
        limit = merged.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise _err(path, where, f"limit must be an integer, got {limit!r}")
        loading = LoadOptions.from_mapping(merged.get("loading"), f"grid {path}: {where}")
        batch = merged.get("batch_size", batch_size)
        if batch != "auto" and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
            raise _err(path, where, f"batch_size must be a positive integer or auto, got {batch!r}")
        base_t = {**_args(grid, "task_args", path, "task_args"), **_args(block, "task_args", path, where)}
        base_m = {**_args(grid, "method_args", path, "method_args"), **_args(block, "method_args", path, where)}
        axes = block.get("grid") or {}
        if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
            raise _err(path, where, "'grid' must map task.KEY / method.KEY to non-empty lists of values")
        for key in axes:
            if not str(key).startswith(("task.", "method.")):
                raise _err(path, where, f"grid key {key!r} must start with task. or method.")
        for model, seed, fit_seed, combo in itertools.product(
            models, seeds, fit_seeds, itertools.product(*axes.values())
        ):
            t_args, m_args = dict(base_t), dict(base_m)
            for key, value in zip(axes, combo):
                side, _, name = str(key).partition(".")
                (t_args if side == "task" else m_args)[name] = arg_value(value)
            try:
                cells = runner.resolve(tasks, methods, model, t_args, m_args, seed, limit, loading, fit_seed)
            except UserError as e:
                raise _err(path, where, str(e)) from None
            for i, cell in enumerate(cells):
                _, rid, rec_path = runner.locate(cell, Path(out))
                label = f"{cell.task_label} / {cell.method_name} / {cell.model} / seed {seed}"
                label += f" / fit seed {fit_seed}" if fit_seed else ""
                if axes:
                    label += " / " + ", ".join(f"{k}={arg_value(v)}" for k, v in zip(axes, combo))
                specs.append(
                    Spec(
                        tasks,
                        methods,
                        model,
                        t_args,
                        m_args,
                        seed,
                        limit,
                        i,
                        str(out),
                        device,
                        batch,
                        loading=merged.get("loading"),
                        label=label,
                        path=str(rec_path),
                        fit_seed=fit_seed,
                        fit_names=[m.fit_name or m.name for m in cell.methods],
                    )
                )
    seen, unique = set(), []
    for s in specs:  # the same cell named twice by two blocks runs once
        if s.path not in seen:
            seen.add(s.path)
            unique.append(s)
    return unique


def fit_runs(grid: dict, path, specs: list[Spec]) -> list[tuple[dict, int]]:
    """The grid's `fit:` entries, validated, each with every fit seed to make it at: its own
    `fit_seed` (or `seed`), else every fit seed of the cells whose methods load that fit ([0] when
    none does), so the cells of a grid with `fit_seed: [0, 1, 2]` find their three fits."""
    from harness import registry

    fits = grid.get("fit") or []
    if not isinstance(fits, list) or not all(
        isinstance(f, dict) and set(f) <= FIT_KEYS and "method" in f for f in fits
    ):
        raise UserError(f"grid {path}: 'fit' must be a list of {{{', '.join(sorted(FIT_KEYS))}}} mappings")
    runs = []
    for i, f in enumerate(fits):
        where = f"fit[{i}]"
        if "seed" in f and "fit_seed" in f:
            raise _err(path, where, "give 'fit_seed' or its older name 'seed', not both")
        if "fit_seed" in f or "seed" in f:
            seeds = seeds_of(f, "fit_seed" if "fit_seed" in f else "seed", path, where)
        else:
            try:
                cls = registry.method(str(f["method"]))
            except UserError as e:
                raise _err(path, where, str(e)) from None
            name = cls.fit_name or cls.name
            seeds = sorted({s.fit_seed for s in specs if name in s.fit_names}) or [0]
        runs += [(f, seed) for seed in dict.fromkeys(seeds)]
    return runs
