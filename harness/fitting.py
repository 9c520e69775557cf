"""Fit stages: `harness fit` trains or searches a method's artifact (LongLoRA's fine-tune, a PRM,
LongRoPE's search) and caches it under harness.artifacts; evaluation attaches the cached one."""

from __future__ import annotations

import dataclasses
import shlex
import time

from harness import models, params, provenance, registry
from harness.errors import UserError
from harness.interfaces import Method, MethodContext


def fit_context(mctx: MethodContext, fit_seed: int) -> MethodContext:
    """The context a method's fit hooks see: the evaluation's, with the fit's seed. `harness fit
    --seed N` trains with seed N; an evaluation at any --seed loads the fit of its --fit-seed."""
    return dataclasses.replace(mctx, seed=fit_seed)


def fit_command(method: Method, model: str, fit_seed: int = 0, task_flags: list[str] = ()) -> str:
    """The `harness fit` command that makes this method's artifact: its parameters that differ
    from their defaults, the task flags that set the target length, the fit seed when non-zero."""
    from harness.grid import arg_value

    args = []
    for f in dataclasses.fields(method):
        if not f.init:
            continue
        value = getattr(method, f.name)
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if value != default:
            args.append(f"--method-arg {shlex.quote(f'{f.name}={arg_value(value)}')}")
    # methods not of kind lm fit without a model (harness fit ignores --model for them)
    model_flags = ["--model", shlex.quote(model)] if method.kind == "lm" else []
    seed = [f"--seed {fit_seed}"] if fit_seed else []
    return " ".join(["harness fit --method", method.name, *model_flags, *task_flags, *args, *seed])


def _find(method: Method, lm, mctx: MethodContext, model_sha, model, fit_seed, task_flags) -> tuple:
    from harness import artifacts

    fctx = fit_context(mctx, fit_seed)
    if not method.needs_fit(lm, fctx):
        return None, None
    key = artifacts.key_for(method, lm, fctx, model_sha)
    payload = artifacts.load(key)
    if payload is None:
        at = f" at fit seed {fit_seed}" if fit_seed else ""
        raise UserError(
            f"method {method.name} needs its fit stage{at} for this model and configuration: run "
            f"`{fit_command(method, model, fit_seed, task_flags() if callable(task_flags) else task_flags)}` first "
            f"(artifact {key} not found in {artifacts.root()})"
        )
    return key, payload


def require_artifact(
    method: Method, lm, mctx: MethodContext, model_sha: str | None, model: str, fit_seed: int = 0, task_flags=()
) -> str | None:
    """The key of the method's fit artifact (None: this configuration has no fit stage), or a
    UserError naming the `harness fit` command to run: checked for every cell before any runs.
    task_flags: `harness fit` flags for the target length (a list, or a callable made on error)."""
    return _find(method, lm, mctx, model_sha, model, fit_seed, task_flags)[0]


def attach_artifact(
    method: Method, lm, mctx: MethodContext, model_sha: str | None, model: str, fit_seed: int = 0, task_flags=()
) -> str | None:
    """Give a method that needs a fit stage its cached artifact (the fit made at `fit_seed`); its
    key goes in the record. `mctx` is the evaluation's context (its seed is not the fit's)."""
    from harness import artifacts

    key, payload = _find(method, lm, mctx, model_sha, model, fit_seed, task_flags)
    if key is not None:
        method.use_artifact(payload, artifacts.folder(key))
    return key


def cost(key: str) -> dict | None:
    """What the fit behind an artifact cost (wall and CPU seconds, device, threads; the fits of the
    artifacts it reused included), for the record of every cell that uses it: the methods table
    reads training costs from committed records."""
    from harness import artifacts

    payload = artifacts.load(key) or {}
    if "fit_seconds" not in payload:
        return None
    env = payload.get("provenance", {})
    out = {
        "seconds": payload["fit_seconds"],
        "cpu_seconds": payload.get("fit_cpu_seconds"),
        "device": env.get("gpu") or env.get("device"),
        "threads": env.get("threads"),
    }
    # artifacts the fit loaded instead of training them (beam_search's PRM): their fits are part of
    # this one's cost, else a fit that found its inputs ready reads as free
    for inner in filter(None, map(cost, payload.get("reused_artifacts", []))):
        for k in ("seconds", "cpu_seconds"):
            if out[k] is not None and inner[k] is not None:
                out[k] = round(out[k] + inner[k], 1)
    return out


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
    """Run a method's fit stage at `seed` (the task, when given, supplies the target context
    length and the synthetic math world's version). A non-zero seed is part of the artifact's key
    (harness.artifacts.key_for)."""
    from harness import artifacts
    from harness.lm import LM

    params.check_seed(seed)

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
        fit_seed=seed,
        fit_seconds=round(time.perf_counter() - t0, 1),
        # CPU seconds of all threads: the budget measure that a loaded machine cannot inflate
        fit_cpu_seconds=round(time.process_time() - c0, 1),
        provenance=provenance.environment(dev),
    )
    artifacts.save(key, payload, write_files)
    if lm is not None:
        lm.close()
    return key, payload
