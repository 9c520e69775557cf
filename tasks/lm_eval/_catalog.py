"""lm-eval's task index, looked up without loading any dataset: which tasks a name stands for,
their output types (does the task generate?), versions and metric directions.

lm-eval indexes its ~14k built-in task YAML files in about 10 s. A task found under
`include_path` alone is looked up in an index of that folder only (fast, what the tests use);
anything else falls back to the full index. Both are cached for the process."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from harness.errors import UserError, nearest

# lm-eval's TaskConfig default output type, and its default metrics per output type
DEFAULT_OUTPUT_TYPE = "generate_until"


@dataclass
class Leaf:
    name: str
    output_type: str  # loglikelihood, loglikelihood_rolling, multiple_choice, generate_until, python
    version: object = None  # metadata.version of the task's YAML


@dataclass
class Plan:
    name: str
    kind: str  # task, group or tag
    include_path: str | None
    full_index: bool  # needs lm-eval's built-in tasks
    leaves: list[Leaf] = field(default_factory=list)

    @property
    def generates(self) -> bool:
        """Decoding methods act only on generate_until requests; Python-class tasks may issue them."""
        return any(leaf.output_type in ("generate_until", "python") for leaf in self.leaves)


@lru_cache(maxsize=8)
def manager(include_path: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def check_include_path(include_path: str | None) -> str | None:
    if include_path is None:
        return None
    path = Path(include_path).expanduser()
    if not path.is_dir():
        raise UserError(f"include_path {include_path!r} is not a folder (lm-eval scans a folder of task YAML files)")
    return str(path.resolve())


def plan(name: str, include_path: str | None) -> Plan:
    """What `name` stands for, or UserError with lm-eval's nearest names."""
    include_path = check_include_path(include_path)
    if include_path:
        try:
            return _walk_plan(name, manager(include_path, False), include_path, full=False)
        except KeyError:
            pass  # not there, or it refers to built-in tasks: use the full index
    tm = manager(include_path, True)
    try:
        return _walk_plan(name, tm, include_path, full=True)
    except KeyError as e:
        missing = e.args[0]
        where = (
            f" (searched lm-eval {lm_eval_version()} and {include_path})"
            if include_path
            else f" (lm-eval {lm_eval_version()}; local task YAML: --task-arg include_path=FOLDER)"
        )
        if missing == name:
            raise UserError(f"unknown lm-eval task {name!r}{where}.{nearest(name, tm.all_tasks)}") from None
        raise UserError(f"lm-eval task {name!r} refers to unknown task {missing!r}{where}") from None


def _walk_plan(name: str, tm, include_path: str | None, full: bool) -> Plan:
    entry = tm.task_index.get(name)
    if entry is None:
        raise KeyError(name)
    kind = entry.kind.name.lower()
    out = Plan(name, "task" if kind in ("task", "py_task") else kind, include_path, full)
    _walk(name, tm.task_index, out.leaves, set())
    return out


def _walk(name: str, index: dict, leaves: list[Leaf], seen: set, override: str | None = None) -> None:
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = index.get(name)
    if entry is None:
        raise KeyError(name)
    if name in seen:
        return
    seen.add(name)
    if entry.kind == Kind.TAG:
        for task in sorted(entry.tags):
            _walk(task, index, leaves, seen, override)
        return
    cfg = load_yaml(entry.yaml_path, resolve_func=False)
    if entry.kind == Kind.PY_TASK:
        leaves.append(Leaf(name, override or cfg.get("output_type") or "python", _version_of(cfg)))
    elif entry.kind == Kind.GROUP:
        _walk_members(cfg, index, leaves, seen, cfg.get("output_type", override))
    else:
        leaves.append(Leaf(name, override or cfg.get("output_type", DEFAULT_OUTPUT_TYPE), _version_of(cfg)))


def _walk_members(cfg: dict, index: dict, leaves: list[Leaf], seen: set, override: str | None) -> None:
    for item in cfg.get("task") or []:
        if isinstance(item, str):
            _walk(item, index, leaves, seen, override)
        elif isinstance(item, dict) and "group" in item:
            if item["group"] in index:
                _walk(item["group"], index, leaves, seen, item.get("output_type", override))
            else:  # an inline group
                _walk_members(item, index, leaves, seen, item.get("output_type", override))
        elif isinstance(item, dict) and "task" in item:
            out = item.get("output_type", override)
            if item["task"] in index:
                _walk(item["task"], index, leaves, seen, out)
            else:  # an inline task
                leaves.append(Leaf(item["task"], out or DEFAULT_OUTPUT_TYPE, _version_of(item)))


def _version_of(cfg: dict):
    return (cfg.get("metadata") or {}).get("version")


def lm_eval_version() -> str:
    import lm_eval

    return lm_eval.__version__
