"""One decorator registers tasks and methods; modules under harness.tasks / harness.methods and
third-party packages (entry point group `harness.plugins`) are imported on first use.

Start-up stays fast because nothing is imported to *find* a name: `registry_index.json` (generated
by `harness docs`, checked by tests/test_registry.py) maps each task, method and bridge family to
its module and to what `harness list` shows. Looking a name up imports only its module; a name the
index does not know (a method added since, a plugin) falls back to importing everything."""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import re
from dataclasses import dataclass, is_dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from harness.errors import UserError, nearest
from harness.interfaces import METHOD_KINDS, Method, Task, length_alias_params

INDEX_PATH = Path(__file__).with_name("registry_index.json")

TASKS: dict[str, type[Task]] = {}
METHODS: dict[str, type[Method]] = {}
FAMILIES: dict[str, "Family"] = {}  # "lm_eval" -> tasks named lm_eval:<x>, "kvpress" -> methods
FAMILY_MODULES: dict[str, str] = {}  # prefix -> the module that registered it (for the index)


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
    FAMILY_MODULES[prefix] = build.__module__


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


def _import_builtin() -> None:
    _import_all("harness.tasks")
    _import_all("harness.methods")


def load() -> None:
    """Import every task and method (the project's and the plugins'): for whoever needs them all."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    _import_builtin()
    for ep in entry_points(group="harness.plugins"):
        ep.load()


# -- the index: what `harness list` shows, and where each name lives, without importing it ----------
def _first_line(cls) -> str:
    return (cls.__doc__ or "").strip().split("\n")[0]


def describe_task(cls: type[Task]) -> dict:
    from harness import params

    return {
        "name": cls.name,
        "kind": "task",
        "summary": cls.summary or _first_line(cls),
        "accepts": list(cls.accepts),
        "main_metric": cls.main_metric,
        "version": cls.version,
        "aliases": sorted(cls.aliases) + ([f"{cls.length_alias}_<N>k"] if cls.length_alias else []),
        "params": params.describe(cls),
        "module": cls.__module__,
        "alias_params": cls.aliases,
        "length_alias": cls.length_alias,
    }


def describe_method(cls: type[Method]) -> dict:
    from harness import params

    return {
        "name": cls.name,
        "kind": cls.kind,
        "family": cls.family,
        "summary": _first_line(cls),
        "paper": cls.paper,
        "patches": sorted(getattr(cls, "patches", ())),
        "params": params.describe(cls),
        "module": cls.__module__,
    }


def describe_family(f: Family) -> dict:
    return {
        "name": f"{f.prefix}:<name>",
        "kind": f.kind or f.table,
        "family": f"{f.prefix} (bridge)",
        "summary": f.summary,
        "params": [],
        "prefix": f.prefix,
        "table": f.table,
        "module": FAMILY_MODULES.get(f.prefix, ""),
    }


def build_index() -> dict:
    """The index from the imported registry (the project's own tasks and methods, no plugins)."""
    _import_builtin()
    builtin = lambda cls: cls.__module__.startswith(("harness.tasks.", "harness.methods."))
    return {
        "tasks": [describe_task(c) for _, c in sorted(TASKS.items()) if builtin(c)],
        "methods": [describe_method(c) for _, c in sorted(METHODS.items()) if builtin(c)],
        "families": [
            describe_family(f) for _, f in sorted(FAMILIES.items()) if f.build.__module__.startswith("harness.")
        ],
    }


@functools.cache
def index() -> dict:
    """The committed index; empty when the file is missing (then every lookup imports everything)."""
    try:
        return json.loads(INDEX_PATH.read_text())
    except FileNotFoundError:
        return {"tasks": [], "methods": [], "families": []}


@functools.cache
def _plugins() -> tuple:
    return tuple(entry_points(group="harness.plugins"))


def entries(table: str) -> list[dict]:
    """What `harness list` shows for "tasks" or "methods" (bridge families last). Read from the index
    unless plugins are installed, which are only known by importing them."""
    kind = table.rstrip("s")
    if _plugins() or not index()[table]:
        load()
        own = [
            describe_task(c) if kind == "task" else describe_method(c)
            for _, c in sorted((TASKS if kind == "task" else METHODS).items())
        ]
        fams = [describe_family(f) for _, f in sorted(FAMILIES.items()) if f.table == kind]
    else:
        own = index()[table]
        fams = [f for f in index()["families"] if f["table"] == kind]
    return own + fams


def _known(table: dict, kind: str, name: str):
    """The class registered as `name`, importing only its module when the index names it."""
    if name not in table:
        for e in index()[kind]:
            if e["name"] == name:
                importlib.import_module(e["module"])
    return table.get(name)


def _family(name: str, table: str):
    """A bridged name (`kvpress:<Press>`): import the family's module from the index, then build."""
    prefix = name.partition(":")[0]
    if prefix not in FAMILIES:
        for f in index()["families"]:
            if f["prefix"] == prefix and f["table"] == table:
                importlib.import_module(f["module"])
    return _from_family(name, table)


def aliases() -> dict[str, tuple[str, dict[str, str]]]:
    """alias -> (task, params): from the index, and from every imported task class."""
    out = {}
    for e in entries("tasks"):
        for alias, params in (e.get("alias_params") or {}).items():
            out[alias] = (e["name"], params)
    for cls in TASKS.values():
        out.update({alias: (cls.name, params) for alias, params in cls.aliases.items()})
    return out


def _alias(name: str):
    """(task, params) for an alias or a pattern alias such as needle_<N>k; None: not one."""
    found = aliases().get(name)
    if found:
        return found
    for e in entries("tasks"):
        params = length_alias_params(e.get("length_alias"), name)
        if params is not None:
            return e["name"], params
    for cls in TASKS.values():  # imported classes may override alias_params
        params = cls.alias_params(name)
        if params is not None:
            return cls.name, params
    return None


def task(name: str) -> tuple[type[Task], dict[str, str]]:
    """Resolve a task name or alias to (class, alias params)."""
    for attempt in ("index", "everything"):
        if attempt == "everything":
            load()  # a name the index does not know: a plugin's, or one added since the index was made
        if ":" in name:
            built = _family(name, "task")
            if built is not None:
                return built, {}
            continue
        cls = _known(TASKS, "tasks", name)
        if cls is not None:
            return cls, {}
        alias = _alias(name)
        if alias:
            return _known(TASKS, "tasks", alias[0]), dict(alias[1])
    choices = list(TASKS) + list(aliases()) + [f"{p}:" for p, f in FAMILIES.items() if f.table == "task"]
    raise UserError(f"unknown task {name!r}.{nearest(name, choices)} Run `harness list tasks` to see all.")


def method(name: str) -> type[Method]:
    for attempt in ("index", "everything"):
        if attempt == "everything":
            load()
        found = _family(name, "method") if ":" in name else _known(METHODS, "methods", name)
        if found is not None:
            return found
    raise UserError(f"unknown method {name!r}.{nearest(name, METHODS)} Run `harness list methods` to see all.")


def all_tasks() -> dict[str, type[Task]]:
    load()
    return dict(TASKS)


def all_methods() -> dict[str, type[Method]]:
    load()
    return dict(METHODS)
