"""`harness sweep GRID.yaml`: expand a grid file into cells and run them on a local process pool or
as Slurm job arrays (submitit). Both executors call the same cell function, `run_cell`, which
resolves and evaluates one cell through the runner, so a sweep cell and an `eval` cell write the
same record to the same path. Finished cells are skipped before anything is submitted; failures
are retried; the run ends with a done / skipped / failed summary.

The grid file's format (YAML) is parsed and expanded into cells by harness.grid."""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from harness.errors import NoEffect, Refused, UserError

from harness.grid import Spec, arg_value, expand, fit_runs, load_grid


def run_cell(spec: Spec) -> dict:
    """The one cell function both executors run: resolve, evaluate (skips a finished record)."""
    from harness import runner
    from harness.loading import LoadOptions

    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    loading = LoadOptions.from_mapping(spec.loading, "grid")
    cells = runner.resolve(
        spec.tasks,
        spec.methods,
        spec.model,
        spec.task_args,
        spec.method_args,
        spec.seed,
        spec.limit,
        loading,
        spec.fit_seed,
    )
    try:
        outcome = runner.evaluate(
            [cells[spec.index]], device=spec.device, out=Path(spec.out), batch_size=spec.batch_size, log=lambda m: None
        )[0]
    except Refused as e:  # the model cannot take this cell: the sweep records why and goes on
        return {"status": "refused", "reason": str(e), "path": spec.path}
    return {"status": "skipped" if outcome.skipped else "done", "path": str(outcome.path)}


def _finish(spec: Spec, res: dict) -> None:
    spec.outcome = res["status"]
    spec.reasons.append(res.get("reason", res["status"]))


def _reason(e: BaseException) -> str:
    if isinstance(e, (UserError, NoEffect)):
        return str(e)
    remote = str(e.__cause__ or "")  # a pool worker's traceback travels as text
    frames = re.findall(r'File "([^"]+)", line (\d+)', remote)
    if frames:
        where = f" at {Path(frames[-1][0]).name}:{frames[-1][1]}"
    else:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{e.__class__.__name__}: {e}{where}"


def _retryable(e: BaseException) -> bool:
    return not isinstance(e, UserError)  # a user mistake fails the same way every time


# -- local: a process pool, one device per worker ----------------------------------------------
_DEVICE = None


def device_slots(workers: int, devices: list[str]) -> list[str | None]:
    """The device of each worker of a local pool: round-robin over `devices` (None: no pinning)."""
    return [devices[i % len(devices)] if devices else None for i in range(workers)]


def _init_worker(queue) -> None:
    """Pin this worker to one device before anything touches CUDA (HELM's MultiGPURunner way).
    Each worker takes one slot of device_slots(); the queue holds exactly one per worker, and its
    items reach the pipe through a feeder thread, so the take blocks rather than racing it."""
    global _DEVICE
    _DEVICE = queue.get(timeout=300)
    if _DEVICE is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(_DEVICE)


def _local_cell(spec: Spec) -> dict:
    return dict(run_cell(spec), device=_DEVICE)


DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_devices(executor: str, device: str, devices: list[str] | None) -> None:
    """One UserError up front for a --device or --devices no cell could use (rather than every
    cell failing on its own): the syntax everywhere; on the local executor also whether CUDA and
    the GPUs named are there (a Slurm node's are not known from the submitting machine)."""
    if not DEVICE_RE.fullmatch(device):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if executor != "local":
        return
    from harness import models

    models.pick_device(device)
    visible = visible_devices()
    unknown = [d.strip() for d in devices or [] if d.strip() not in visible]
    if unknown:
        raise UserError(f"--devices: no GPU {', '.join(unknown)} here (visible: {', '.join(visible) or 'none'})")


def visible_devices() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def run_local(specs: list[Spec], workers: int, retries: int, devices: list[str], log, fn=None) -> None:
    """Run specs on a spawned process pool; `fn` (default: the cell function) must be importable."""
    fn = fn or _local_cell
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no forked torch / CUDA state in the workers
    todo = list(specs)
    while todo:
        queue = ctx.Queue()
        for slot in device_slots(workers, devices):
            queue.put(slot)
        broken = False
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(queue,)) as pool:
            running = {pool.submit(fn, s): s for s in todo}
            todo = []
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    spec = running.pop(fut)
                    spec.attempts += 1
                    try:
                        res = fut.result()
                    except BrokenProcessPool as e:  # a worker died (OOM, kill): rebuild the pool
                        broken = True
                        spec.reasons.append(f"worker process died ({e})")
                        if spec.attempts <= retries:
                            todo.append(spec)
                        continue
                    except BaseException as e:
                        spec.reasons.append(_reason(e))
                        if spec.attempts <= retries and _retryable(e):
                            if broken:
                                todo.append(spec)
                            else:
                                running[pool.submit(fn, spec)] = spec
                        continue
                    _finish(spec, res)
                    dev = f" on device {res['device']}" if res.get("device") is not None else ""
                    log(f"{res['status']}: {spec.label}{dev}")
        if not broken:
            break


# -- slurm: the same cell function as submitit job arrays ---------------------------------------
def run_slurm(
    specs: list[Spec], retries: int, folder: Path, cluster: str | None, max_parallel: int, slurm: dict, log, fn=None
) -> None:
    """Submit specs as job arrays (at most max_parallel running); `fn` defaults to the cell function."""
    fn = fn or run_cell
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install 'harness-eval[slurm]'") from None
    if cluster in (None, "auto", "slurm"):
        import shutil

        if shutil.which("sbatch") is None:
            raise UserError(
                "--executor slurm: no sbatch on PATH (no Slurm here); use --cluster local to run "
                "the same job arrays with submitit's local executor, or --executor local"
            )
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=None if cluster in (None, "auto") else cluster)
    params = {
        "timeout_min": slurm.get("timeout_min", 60),
        "name": "harness-sweep",
        "slurm_array_parallelism": max_parallel,
    }
    for key in ("cpus_per_task", "gpus_per_node", "mem_gb"):
        if slurm.get(key) is not None:
            params[key] = slurm[key]
    if slurm.get("partition"):
        params["slurm_partition"] = slurm["partition"]
    executor.update_parameters(**params)
    todo = list(specs)
    while todo:
        jobs = executor.map_array(fn, todo)
        log(
            f"submitted {len(jobs)} job(s) as an array (at most {max_parallel} at once): "
            f"{jobs[0].job_id.split('_')[0] if jobs else ''}"
        )
        again = []
        for job, spec in zip(jobs, todo):
            spec.attempts += 1
            try:
                res = job.result()
            except Exception as e:
                spec.reasons.append(_slurm_reason(e))
                if spec.attempts <= retries:
                    again.append(spec)
                continue
            _finish(spec, res)
            log(f"{res['status']}: {spec.label} (job {job.job_id})")
        todo = again


def _slurm_reason(e: BaseException) -> str:
    """The job's own exception line from submitit's error (its text holds the job's traceback)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
    return f"{e.__class__.__name__}: {(raised or lines or [''])[-1][:300]}"


# -- the command ----------------------------------------------------------------------------------
def summarize(specs: list[Spec], skipped: list[Spec]) -> dict:
    """done / skipped / refused (the model cannot take the cell: not a failure) / failed."""
    done = [s for s in specs if s.outcome in ("done", "skipped")]
    refused = [s for s in specs if s.outcome == "refused"]
    failed = [s for s in specs if s.outcome not in ("done", "skipped", "refused")]
    return {
        "cells": len(specs) + len(skipped),
        "done": len(done),
        "skipped": len(skipped),
        "refused": len(refused),
        "failed": len(failed),
        "refusals": [{"cell": s.label, "reason": s.reasons[-1]} for s in refused],
        "failures": [
            {
                "cell": s.label,
                "attempts": s.attempts,
                "reason": s.reasons[-1] if s.reasons else "not run",
                "record": s.path,
            }
            for s in failed
        ],
        "done_records": sorted(s.path for s in done),
    }


def sweep(
    grid_path,
    executor: str = "local",
    workers: int = 1,
    retries: int = 1,
    out: str | None = None,
    device: str = "auto",
    devices: list[str] | None = None,
    cluster: str | None = None,
    max_parallel: int = 8,
    slurm: dict | None = None,
    threads: int | None = None,
    dry_run: bool = False,
    log=print,
) -> dict:
    from harness import fitting, records

    grid = load_grid(grid_path)
    out = out or grid.get("out") or str(records.default_out())
    if not isinstance(out, str):
        raise UserError(f"grid {grid_path}: 'out' must be a folder path")
    if workers < 1 or retries < 0 or max_parallel < 1:
        raise UserError("--workers and --max-parallel must be positive, --retries at least 0")
    records.check_out_folder(out)
    check_devices(executor, device, devices)
    specs = expand(grid, grid_path, out, device)
    fits = fit_runs(grid, grid_path, specs)
    finished = [records.finished(Path(s.path), Path(s.path).stem) for s in specs]
    pending = [s for s, f in zip(specs, finished) if not f]
    skipped = [s for s, f in zip(specs, finished) if f]
    log(
        f"sweep {grid_path}: {len(specs)} cells, {len(skipped)} finished (skipped), {len(pending)} to run "
        f"({executor}, out {out})"
    )
    if dry_run:
        for s, f in zip(specs, finished):
            log(f"{'skip' if f else 'run '}  {s.label}  -> {s.path}")
        return summarize([], skipped) | {"cells": len(specs), "failed": 0}
    if pending:
        default_model = (grid.get("models") or [None])[0] if isinstance(grid.get("models"), list) else None
        for f, fit_seed in fits:
            fitting.fit(
                f["method"],
                f.get("model") or default_model or "zoo:tiny-llama",
                f.get("task"),
                {k: arg_value(v) for k, v in (f.get("task_args") or {}).items()},
                {k: arg_value(v) for k, v in (f.get("method_args") or {}).items()},
                fit_seed,
                device,
                log=lambda m: None,
            )
    t0 = time.perf_counter()
    if executor == "local":
        for s in pending:
            s.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        devs = devices if devices is not None else visible_devices()
        if pending:
            run_local(pending, workers, retries, devs, log)
    elif executor == "slurm":
        for s in pending:
            s.threads = threads or (slurm or {}).get("cpus_per_task")
        if pending:
            run_slurm(pending, retries, Path(out) / ".sweep" / "slurm", cluster, max_parallel, slurm or {}, log)
    else:
        raise UserError(f"--executor {executor!r}: use local or slurm")
    summary = summarize(pending, skipped)
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    return summary


def print_summary(summary: dict, file=None) -> None:
    file = file or sys.stdout
    print(
        f"sweep: {summary['cells']} cells: {summary['done']} done, {summary['skipped']} skipped "
        f"(finished before), {summary.get('refused', 0)} refused, {summary['failed']} failed",
        file=file,
    )
    for r in summary.get("refusals", []):
        print(f"  refused: {r['cell']}: {r['reason']}", file=file)
    for f in summary["failures"]:
        print(f"  failed after {f['attempts']} attempt(s): {f['cell']}: {f['reason']}", file=file)
