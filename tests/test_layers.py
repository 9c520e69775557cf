"""The core (harness/) imports no method or task by name: it reaches them only through the
registry's discovery (harness.registry walks the two packages). The backbones (backbones/) are a
layer below the tasks that use them: they import no task or method either. Checked on the import
statements of every module, parsed with ast (comments and strings do not count)."""

import ast
from pathlib import Path

import harness
import harness.backbones

CORE = Path(harness.__file__).parent
BACKBONES = Path(harness.backbones.__file__).parent
FORBIDDEN = ("harness.methods", "harness.tasks", "methods", "tasks")


def core_imports(root=CORE):
    for path in sorted(root.rglob("*.py")):
        if {"methods", "tasks", "leaderboard", "backbones"} & set(path.relative_to(root).parts[:1]):
            continue  # the installed packages mapped under harness/ (see setup.py), not the core
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                yield from ((path, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                yield path, node.module


def violations(root=CORE):
    return [
        f"{p.relative_to(root)}: {m}"
        for p, m in core_imports(root)
        if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
    ]


def test_core_imports_no_method_or_task():
    bad = violations()
    assert not bad, "the core imports a method or task module:\n" + "\n".join(bad)


def test_the_check_finds_an_import_inside_a_function(tmp_path):
    (tmp_path / "runner.py").write_text("def f():\n    from harness.methods.rope.alibi import ALiBi\n")
    (tmp_path / "ok.py").write_text("# from harness.tasks import needle\nfrom harness import registry\n")
    assert violations(tmp_path) == ["runner.py: harness.methods.rope.alibi"]


# -- methods, tasks, benchmarks, scripts and the leaderboard use the core's public API only --------
OUTSIDE = ("methods", "tasks", "benchmarks", "scripts", "leaderboard")
# names that hold the LM or the runner (and the core modules whose private names are off limits)
HOLDERS = {"lm", "tiny_lm", "runner", "LM"}


def _holder(node) -> str | None:
    """`lm`, `self.lm`, `ctx.lm`, `runner`: the name of what holds the LM/runner, else None."""
    if isinstance(node, ast.Name) and node.id in HOLDERS:
        return node.id
    if isinstance(node, ast.Attribute) and node.attr in HOLDERS:
        return node.attr
    return None


def private_uses(paths):
    """`lm._x`, `self.lm._x`, `runner._x` and `from harness.runner/lm import _x` in these files."""
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                holder = _holder(node.value)
                if holder:
                    yield f"{path}:{node.lineno}: {holder}.{node.attr}"
            elif isinstance(node, ast.ImportFrom) and node.module in ("harness.runner", "harness.lm"):
                for a in node.names:
                    if a.name.startswith("_"):
                        yield f"{path}:{node.lineno}: from {node.module} import {a.name}"


def test_no_private_attribute_of_the_lm_or_runner_outside_the_core():
    root = CORE.parent
    files = [p for top in OUTSIDE for p in sorted((root / top).rglob("*.py"))]
    assert len(files) > 100  # the folders were found
    bad = list(private_uses(files))
    assert not bad, "private attributes of the LM or runner used outside the core:\n" + "\n".join(bad)


def test_the_private_check_finds_each_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from harness.runner import _build\n"
        "def apply(self, lm):\n    lm._generate_batch = None\n    self.lm._hook.remove()\n"
        "    lm.__class__, lm.kv_request, other._x\n"
    )
    found = sorted(line.split(": ", 1)[1] for line in private_uses([f]))
    assert found == ["from harness.runner import _build", "lm._generate_batch", "lm._hook"]


def test_backbones_import_no_method_or_task():
    bad = violations(BACKBONES)
    assert not bad, "a backbone imports a method or task module:\n" + "\n".join(bad)
