"""Fit stages: `harness fit` trains or searches a method's artifact (LongLoRA's fine-tune, a PRM,
LongRoPE's search) and caches it under harness.artifacts; evaluation attaches the cached one."""

from __future__ import annotations

import time

from harness import models, params, provenance, registry
from harness.errors import UserError
from harness.interfaces import Method, MethodContext


def attach_artifact(method: Method, lm, mctx: MethodContext, model_sha: str | None, model: str) -> str | None:
    """Give a method that needs a fit stage its cached artifact; its key goes in the record."""
    from harness import artifacts

    if not method.needs_fit(lm, mctx):
        return None
    key = artifacts.key_for(method, lm, mctx, model_sha)
    payload = artifacts.load(key)
    if payload is None:
        raise UserError(
            f"method {method.name} needs its fit stage for this model and configuration: run "
            f"`harness fit --method {method.name} --model {model}` with the same --method-arg "
            f"(and --task) first (artifact {key} not found in {artifacts.root()})"
        )
    method.use_artifact(payload, artifacts.folder(key))
    return key


def fit(
    method_name: str,
    model: str,
    task_name: str | None,
    task_args: dict[str, str],
    method_args: dict[str, str],
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    log=print,
    allow_pickle: bool = False,
    loading=None,
) -> tuple[str, dict]:
    """Run a method's fit stage (the task, when given, supplies the target context length and the
    synthetic math world's version)."""
    from harness import artifacts
    from harness.lm import LM

    if "+" in method_name:
        raise UserError("fit one method at a time (no '+' compositions)")
    cls = registry.method(method_name)
    method = params.build(cls, method_args, f"method {method_name}")
    target, world = None, 1
    if task_name:
        tcls, alias = registry.task(task_name)
        task = params.build(tcls, {**alias, **task_args}, f"task {task_name}")
        target, world = task.target_length(), task.math_world()
    elif task_args:
        raise UserError("--task-arg needs --task")
    if cls.kind == "lm":
        loaded = models.load(model, device, trust_remote_code, allow_pickle, options=loading)
        lm, model_id, sha, dev = LM(loaded), loaded.id, loaded.sha256, loaded.device
    else:  # other kinds train their own models (a PRM): no LM, as in their tasks' evaluation
        lm, model_id, sha, dev = None, "none", None, models.pick_device(device)
    mctx = MethodContext(target_length=target, seed=seed, world_version=world)
    if not method.needs_fit(lm, mctx):
        raise UserError(f"method {method_name} with these parameters has no fit stage to run")
    key = artifacts.key_for(method, lm, mctx, sha)
    existing = artifacts.load(key)
    if existing is not None and not overwrite:
        log(f"artifact {key} exists in {artifacts.folder(key)} (use --overwrite to refit)")
        return key, existing
    t0, c0 = time.perf_counter(), time.process_time()
    payload, write_files = method.fit(lm, mctx, log=log)
    payload = dict(
        payload,
        method=method_name,
        model=model_id,
        model_sha256=sha,
        fit_params=method.fit_params(lm, mctx),
        data_hash=method.fit_data_hash(lm, mctx),
        fit_seconds=round(time.perf_counter() - t0, 1),
        # CPU seconds of all threads: the budget measure that a loaded machine cannot inflate
        fit_cpu_seconds=round(time.process_time() - c0, 1),
        provenance=provenance.environment(dev),
    )
    artifacts.save(key, payload, write_files)
    if lm is not None:
        lm.close()
    return key, payload
