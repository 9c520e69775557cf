"""The `lm_eval:` task family: `--task lm_eval:<task or group>` for any lm-evaluation-harness task.

The class is built on first use; lm-eval is imported only then (it is an optional dependency:
`pip install 'harness-eval[lmeval]'`)."""

from __future__ import annotations

import importlib.util
import os
import sys

from harness.errors import UserError
from harness.registry import register_family

SUMMARY = (
    "any lm-evaluation-harness task, group or tag (e.g. lm_eval:hellaswag, lm_eval:niah_single_1), "
    "run by lm-eval's evaluator on the model with the methods applied. Local task files: "
    "--task-arg include_path=FOLDER of lm-eval task YAML (dataset_path: json with data_files reads a "
    "local JSONL; its paths are relative to the working directory). Task args: num_fewshot, limit, "
    "max_length, max_gen_toks, metadata='{JSON}' (e.g. RULER's max_seq_lengths), gen_kwargs=k=v,..., "
    "bootstrap_iters, apply_chat_template, system_instruction. Offline: HF_DATASETS_OFFLINE=1 unless set."
)
INSTALL = "pip install 'harness-eval[lmeval]'  (lm_eval==0.4.13)"
_built: dict[str, type] = {}


def go_offline() -> None:
    """The harness has no hub access: lm-eval's datasets and hub lookups stay local unless the user
    set HF_DATASETS_OFFLINE / HF_HUB_OFFLINE. Both libraries read them once, at import, so this runs
    before lm-eval is imported, and updates their constants if they were imported already."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hub = os.environ["HF_HUB_OFFLINE"].upper() in ("1", "ON", "YES", "TRUE")
    data = os.environ["HF_DATASETS_OFFLINE"].upper() in ("1", "ON", "YES", "TRUE")
    if hub and "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if data and "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True


def build(name: str) -> type:
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"task lm_eval:{name} needs lm-evaluation-harness, which is not installed: {INSTALL}")
    go_offline()
    if name not in _built:
        from harness.tasks.lm_eval._task import LMEvalTask

        cls = type(
            f"LMEval_{name}",
            (LMEvalTask,),
            {
                "name": f"lm_eval:{name}",
                "lm_eval_task": name,
                "__module__": LMEvalTask.__module__,
                "__doc__": f"lm-eval task {name!r} (see harness.tasks.lm_eval).",
            },
        )
        _built[name] = cls
    return _built[name]


register_family("lm_eval", "task", build, SUMMARY)
