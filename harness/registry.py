"""One decorator registers tasks and methods; modules under harness.tasks / harness.methods and
third-party packages (entry point group `harness.plugins`) are imported on first use."""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import is_dataclass
from importlib.metadata import entry_points

from harness.errors import UserError, nearest
from harness.interfaces import METHOD_KINDS, Method, Task

TASKS: dict[str, type[Task]] = {}
METHODS: dict[str, type[Method]] = {}
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
    found = aliases().get(name) or _alias_pattern(name)
    if found:
        return TASKS[found[0]], dict(found[1])
    choices = list(TASKS) + list(aliases())
    raise UserError(f"unknown task {name!r}.{nearest(name, choices)} "
                    f"Run `harness list tasks` to see all.")


def method(name: str) -> type[Method]:
    load()
    if name in METHODS:
        return METHODS[name]
    raise UserError(f"unknown method {name!r}.{nearest(name, METHODS)} "
                    f"Run `harness list methods` to see all.")
