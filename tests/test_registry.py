"""Registration rules and third-party discovery through entry points."""

import sys
import types
from dataclasses import dataclass

import pytest

from harness import registry
from harness.interfaces import LMMethod, Task


def test_register_requires_dataclass_and_valid_name():
    with pytest.raises(TypeError, match="@dataclass"):

        @registry.register
        class NotDataclass(LMMethod):
            name = "x"

    with pytest.raises(TypeError, match="lowercase"):

        @registry.register
        @dataclass
        class BadName(LMMethod):
            name = "Bad-Name"


def test_duplicate_name_is_refused():
    registry.load()
    with pytest.raises(TypeError, match="duplicate"):

        @registry.register
        @dataclass
        class AnotherYarn(LMMethod):
            name = "yarn"


def test_entry_point_plugins_are_loaded(monkeypatch):
    module = types.ModuleType("fake_harness_plugin")
    exec(
        """
from dataclasses import dataclass
from harness.interfaces import LMMethod
from harness.registry import register

@register
@dataclass
class PluginMethod(LMMethod):
    '''A method shipped by a third-party package.'''
    name = "plugin_method_for_test"
""",
        module.__dict__,
    )

    class EP:
        def load(self):
            sys.modules["fake_harness_plugin"] = module
            return module

    monkeypatch.setattr(registry, "entry_points", lambda group: [EP()] if group == "harness.plugins" else [])
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        registry.load()
        assert registry.method("plugin_method_for_test").__name__ == "PluginMethod"
    finally:
        registry.METHODS.pop("plugin_method_for_test", None)
        sys.modules.pop("fake_harness_plugin", None)


def test_every_method_documents_its_paper():
    registry.load()
    for name, cls in registry.METHODS.items():
        assert (cls.__doc__ or "").strip(), name
        if name != "baseline":
            assert cls.paper, name


def test_task_classes_declare_metrics_and_version():
    registry.load()
    for cls in registry.TASKS.values():
        assert issubclass(cls, Task) and cls.version and cls.main_metric


def test_prefix_family_builds_tasks_on_demand(monkeypatch):
    from dataclasses import dataclass
    from harness.interfaces import Task
    from harness.errors import UserError

    def build(rest):
        if rest != "known":
            raise UserError(f"no such thing {rest!r}")

        @dataclass
        class Built(Task):
            name = f"fake_bridge:{rest}"
            main_metric = "m"

        return Built

    monkeypatch.setitem(registry.FAMILIES, "fake_bridge", registry.Family("fake_bridge", "task", build, "test"))
    cls, alias = registry.task("fake_bridge:known")
    assert cls.name == "fake_bridge:known" and alias == {}
    with pytest.raises(UserError, match="no such thing"):
        registry.task("fake_bridge:other")
    with pytest.raises(UserError, match="name a task"):
        registry.task("fake_bridge:")
    with pytest.raises(UserError, match="unknown method"):
        registry.method("fake_bridge:known")  # a task family does not make methods


def test_committed_index_matches_the_registry():
    """harness/registry_index.json is what importing every task and method gives; `harness docs`
    regenerates it (a stale index would make `harness list` show old parameters)."""
    from harness import docsgen

    assert registry.INDEX_PATH.read_text() == docsgen.index_text(), "stale index: run `.venv/bin/harness docs`"


def _fresh(code: str) -> str:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_list_and_lookup_import_only_what_they_need():
    """`harness list` reads the index: no torch, no method or task module (but the import-light
    modules of the `harness lm-eval` and `harness weights` subcommands); looking one method up
    imports its own module and not its siblings'."""
    out = _fresh(
        "import sys, contextlib, io\n"
        "from harness.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as f: main(['list', 'methods'])\n"
        "assert 'yarn' in f.getvalue() and 'kvpress:<name>' in f.getvalue()\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('harness.methods.', 'harness.tasks.'))))"
    )
    assert eval(out) == ["harness.tasks._weights", "harness.tasks.lm_eval", "harness.tasks.lm_eval.__main__"]
    out = _fresh(
        "import sys\nfrom harness import registry\nregistry.method('snapkv'); registry.task('needle_128k')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('harness.methods.', 'harness.tasks.'))))"
    )
    loaded = eval(out)
    assert "harness.methods.kv.snapkv" in loaded and "harness.tasks.needle" in loaded
    assert "harness.methods.rope.yarn" not in loaded and "harness.tasks.passkey" not in loaded


def test_names_the_index_does_not_know_fall_back_to_importing_everything(monkeypatch):
    """An index without entries (a method added since it was generated) still resolves every name."""
    empty = {"tasks": [], "methods": [], "families": []}
    monkeypatch.setattr(registry, "index", lambda: empty)
    monkeypatch.setattr(registry, "_loaded", False)
    assert registry.method("yarn").name == "yarn"
    assert registry.method("kvpress:SnapKVPress").__name__ == "KVPress_SnapKVPress"
    assert registry.task("passkey_2k") == (registry.TASKS["passkey"], {"context_length": "2048"})
    with pytest.raises(Exception, match="Did you mean: yarn"):
        registry.method("yarm")
