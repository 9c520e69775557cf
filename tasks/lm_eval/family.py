"""The `lm_eval:` task family: `--task lm_eval:<task or group>` for any lm-evaluation-harness task.

The class is built on first use; lm-eval is imported only then (it is an optional dependency:
`pip install 'harness-eval[lmeval]'`)."""
from __future__ import annotations

import importlib.util

from harness.errors import UserError
from harness.registry import register_family

SUMMARY = ("any lm-evaluation-harness task or group, run by lm-eval's evaluator with the methods "
           "applied; local task YAML: --task-arg include_path=FOLDER; options: num_fewshot, limit, "
           "max_length, max_gen_toks, metadata (JSON), gen_kwargs, bootstrap_iters")
INSTALL = "pip install 'harness-eval[lmeval]'  (lm_eval==0.4.13)"
_built: dict[str, type] = {}


def build(name: str) -> type:
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"task lm_eval:{name} needs lm-evaluation-harness, which is not installed: {INSTALL}")
    if name not in _built:
        from harness.tasks.lm_eval._task import LMEvalTask
        cls = type(f"LMEval_{name}", (LMEvalTask,), {
            "name": f"lm_eval:{name}", "lm_eval_task": name, "__module__": LMEvalTask.__module__,
            "__doc__": f"lm-eval task {name!r} (see harness.tasks.lm_eval)."})
        _built[name] = cls
    return _built[name]


register_family("lm_eval", "task", build, SUMMARY)
