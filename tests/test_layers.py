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


def test_backbones_import_no_method_or_task():
    bad = violations(BACKBONES)
    assert not bad, "a backbone imports a method or task module:\n" + "\n".join(bad)
