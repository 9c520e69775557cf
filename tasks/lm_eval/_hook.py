"""Makes `lm_eval --model harness` work in lm-eval's own CLI.

lm-eval 0.4.13 finds models only in its registry (lm_eval.api.registry); it loads no plugins or
entry points. The installed file `harness_eval_lm_eval.pth` runs `install()` at interpreter start;
it adds a finder that waits for `lm_eval.models` (the package whose import fills lm-eval's model
registry) and then registers `harness` as a lazy placeholder, the same way lm-eval registers its
own models. Nothing is imported until lm-eval itself is, so other programs pay one string
comparison per import. Without the hook: `python -m harness.tasks.lm_eval ...`."""

from __future__ import annotations

import importlib.abc
import sys

TARGET = "lm_eval.models"
MODEL = ("harness", "harness.tasks.lm_eval._model:HarnessModel")


def register() -> None:
    from lm_eval.api.registry import model_registry

    if MODEL[0] not in model_registry:
        model_registry.register(MODEL[0], target=MODEL[1])


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):  # is_package, get_resource_reader, ...: the real loader's
        return getattr(self.inner, name)

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        try:
            register()
        except Exception as e:  # never break lm-eval itself
            print(f"harness: could not register the lm-eval model 'harness': {e}", file=sys.stderr)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    if TARGET in sys.modules:  # lm-eval already loaded (install() called late)
        register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
