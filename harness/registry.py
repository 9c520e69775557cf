"""One decorator registers tasks and methods; modules under harness.tasks / harness.methods and
third-party packages (entry point group `harness.plugins`) are imported on first use."""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, is_dataclass
from typing import Callable
from importlib.metadata import entry_points

from harness.errors import UserError, nearest
from harness.interfaces import METHOD_KINDS, Method, Task

TASKS: dict[str, type[Task]] = {}
METHODS: dict[str, type[Method]] = {}
FAMILIES: dict[str, "Family"] = {}  # "lm_eval" -> tasks named lm_eval:<x>, "kvpress" -> methods


@dataclass
class Family:
    """Tasks or methods named `prefix:<rest>` that a bridge builds on demand (an lm-eval task, a
    kvpress press). `build(rest)` returns the class, or raises UserError with the nearest names."""

    prefix: str
    table: str  # "task" or "method"
    build: Callable[[str], type]
    summary: str
    kind: str = ""  # method kind, for `harness list`


def register_family(prefix: str, table: str, build: Callable[[str], type], summary: str, kind: str = "") -> None:
    if table not in ("task", "method"):
        raise TypeError(f"family {prefix!r}: table must be 'task' or 'method'")
    if not re.fullmatch(r"[a-z0-9_]+", prefix):
        raise TypeError(f"family prefix {prefix!r} must be lowercase letters, digits, _")
    FAMILIES[prefix] = Family(prefix, table, build, summary, kind)


def _from_family(name: str, table: str):
    prefix, colon, rest = name.partition(":")
    fam = FAMILIES.get(prefix) if colon else None
    if fam is None or fam.table != table:
        return None
    if not rest:
        raise UserError(f"{name!r}: name a {table} after '{prefix}:' ({fam.summary})")
    return fam.build(rest)


_loaded = False


def register(cls):
    """Class decorator for a Task or Method dataclass. Its `name` must be unique."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls.__name__}: apply @dataclass before @register")
    if issubclass(cls, Task):
        table = TASKS
    elif issubclass(cls, Method):
        if cls.kind not in METHOD_KINDS:
            raise TypeError(f"{cls.__name__}: kind {cls.kind!r} not in {METHOD_KINDS}")
        table = METHODS
    else:
        raise TypeError(f"{cls.__name__} is neither a Task nor a Method")
    if not re.fullmatch(r"[a-z0-9_]+", cls.name):
        raise TypeError(f"{cls.__name__}: name {cls.name!r} must be lowercase letters, digits, _")
    if cls.name in table and table[cls.name] is not cls:
        raise TypeError(f"duplicate registration of {cls.name!r}")
    table[cls.name] = cls
    return cls


def _import_all(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)


def load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    _import_all("harness.tasks")
    _import_all("harness.methods")
    for ep in entry_points(group="harness.plugins"):
        ep.load()


def aliases() -> dict[str, tuple[str, dict[str, str]]]:
    load()
    out = {}
    for name, cls in TASKS.items():
        for alias, params in cls.aliases.items():
            out[alias] = (name, params)
    return out


def _alias_pattern(name: str):
    """Pattern aliases such as needle_<N>k are declared by a task's `alias_params` classmethod."""
    for cls in TASKS.values():
        params = cls.alias_params(name)
        if params is not None:
            return cls.name, params
    return None


def task(name: str) -> tuple[type[Task], dict[str, str]]:
    """Resolve a task name or alias to (class, alias params)."""
    load()
    if name in TASKS:
        return TASKS[name], {}
    built = _from_family(name, "task")
    if built is not None:
        return built, {}
    found = aliases().get(name) or _alias_pattern(name)
    if found:
        return TASKS[found[0]], dict(found[1])
    choices = list(TASKS) + list(aliases()) + [f"{p}:" for p, f in FAMILIES.items() if f.table == "task"]
    raise UserError(f"unknown task {name!r}.{nearest(name, choices)} Run `harness list tasks` to see all.")


def method(name: str) -> type[Method]:
    load()
    if name in METHODS:
        return METHODS[name]
    built = _from_family(name, "method")
    if built is not None:
        return built
    raise UserError(f"unknown method {name!r}.{nearest(name, METHODS)} Run `harness list methods` to see all.")
