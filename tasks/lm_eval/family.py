"""The `lm_eval:` task family: `--task lm_eval:<task or group>` for any lm-evaluation-harness task.

The class is built on first use; lm-eval is imported only then (it is an optional dependency:
`pip install 'harness-eval[lmeval]'`)."""
from __future__ import annotations

import importlib.util

from harness.errors import UserError
from harness.registry import register_family

SUMMARY = ("any lm-evaluation-harness task, group or tag (e.g. lm_eval:hellaswag, lm_eval:niah_single_1), "
           "run by lm-eval's evaluator on the model with the methods applied. Local task files: "
           "--task-arg include_path=FOLDER of lm-eval task YAML (dataset_path: json with data_files reads a "
           "local JSONL; its paths are relative to the working directory). Task args: num_fewshot, limit, "
           "max_length, max_gen_toks, metadata='{JSON}' (e.g. RULER's max_seq_lengths), gen_kwargs=k=v,..., "
           "bootstrap_iters, apply_chat_template, system_instruction. Offline: HF_DATASETS_OFFLINE=1 unless set.")
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
