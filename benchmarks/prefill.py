"""Prefill speed and memory of the long-context methods: tokens/s of the prefill of L tokens as
the harness runs it (`LM.prefill`: chunks of --prefill-chunk tokens through the KV cache) for each
method, divided by the baseline's tokens/s at the same length, measured alternately in this process
(median of --repeats after a warm-up).
Peak memory: the peak of the bytes allocated during the prefill beyond what was allocated before it
(the weights): on a GPU from PyTorch's allocator statistics; on CPU from the profiler's allocation
events of one more (untimed) prefill, since the process's resident set cannot be reset per method. Not a test: run this file.

    python benchmarks/prefill.py [--lengths 8192,32768] [--device auto] [--json FILE]
                                 [--clock wall|cpu] [--threads N] [--prefill-chunk N] [--merge]

--merge keeps the rows of the --json file at the lengths this run does not measure (an earlier
run's, of the same model on the same device, clock and threads): the long lengths cost hours on
a CPU, so they can be measured in a run of their own. Each length's ratios still come from one
run (its baseline alternated with the methods); the file lists every run's command and commit.

--clock cpu times the process's CPU seconds instead of wall seconds (CPU only): on a machine
shared with other jobs, wall time mostly measures the scheduler; with --threads 1 the CPU
seconds are what the wall time would be on an idle core.

Goals (round 2): every attention-overriding method at most 1.5x the baseline's time and 1.2x its
peak memory, and peak memory linear in the context: the log-log slope of peak memory against
length, printed per method, at most 1.1. Zoo model: the ratios describe the methods' attention
code on a 2.6M-parameter model, not a real LLM's end-to-end prefill.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

METHODS = ["baseline", "yarn", "dynamic_ntk", "selfextend", "dca", "longheads"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def running_peak(prof, sums: dict) -> dict:
    """Adds a stopped profile's allocation (+) and free (-) events, in time order, to the running
    sum in sums["current"] and keeps its maximum in sums["peak"]."""
    events = prof.profiler.kineto_results.events()
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        sums["current"] += nbytes
        sums["peak"] = max(sums["peak"], sums["current"])
    return sums


@torch.no_grad()
def cpu_peak_bytes(lm, method, length: int, ids: torch.Tensor) -> int:
    """Peak of the bytes allocated during one prefill on CPU: the running sum of the profiler's
    allocation (+) and free (-) events in time order. The profiler keeps an event for every op, and
    a 131k prefill's log (256 chunks) outgrew this 24 GiB machine; so it records one chunk at a
    time, a window closing and the next opening as each chunk's forward starts, and the sum carries
    across windows. Nothing runs between one window's stop and the next's start, so no allocation
    is missed: the peak equals one profile's over the whole prefill."""
    from torch.profiler import ProfilerActivity, profile

    sums = {"current": 0, "peak": 0}
    window = []

    def close():
        if window:
            window[0].stop()
            running_peak(window[0], sums)

    def next_window(*_):
        close()
        window[:] = [profile(activities=[ProfilerActivity.CPU], profile_memory=True)]
        window[0].start()

    hook = lm.model.register_forward_pre_hook(next_window)
    try:
        next_window()
        prefill(lm, method, length, ids)
        close()
    finally:
        hook.remove()
    return sums["peak"]


@torch.no_grad()
def prefill(lm, method, length: int, ids: torch.Tensor, clock=time.perf_counter) -> tuple[float, int | None]:
    """Seconds for the chunked prefill of `ids` with the method applied, and the peak GPU bytes it
    allocated beyond those allocated before it."""
    from harness.interfaces import MethodContext

    with method.apply(lm, MethodContext(target_length=length)):
        _sync(lm.device)
        if lm.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = clock()
        lm.prefill(ids, torch.ones_like(ids))
        _sync(lm.device)
        seconds = clock() - t0
        peak = torch.cuda.max_memory_allocated() - before if lm.device.startswith("cuda") else None
    return seconds, peak


def main() -> None:
    from harness import registry
    from harness.lm import LM
    from harness.models import load, pick_device

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo:tiny-llama")
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU seconds (CPU only)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    ap.add_argument("--prefill-chunk", type=int, default=None, help="tokens per prefill forward (default: the LM's)")
    ap.add_argument("--merge", action="store_true", help="keep --json's rows at the lengths not measured here")
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    if a.merge and not a.json:
        ap.error("--merge needs --json FILE: the file whose rows at other lengths are kept")
    earlier = json.loads(Path(a.json).read_text()) if a.merge and Path(a.json).is_file() else None
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    if a.clock == "cpu" and device.startswith("cuda"):
        raise SystemExit("--clock cpu times CPU work; on a GPU use the wall clock")
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    lm = LM(load(a.model, device), prefill_chunk=a.prefill_chunk)
    methods = {n: registry.method(n)() for n in a.methods.split(",")}
    dev = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"cpu, {torch.get_num_threads()} threads, {a.clock} clock"
    )
    what = describe(lm)
    run = {**header(a.model, lm, dev), "prefill_chunk": lm.prefill_chunk}
    if earlier and (mismatch := [k for k, v in run.items() if earlier.get(k) != v]):
        ap.error(
            f"--merge: {a.json} was measured with another "
            + ", ".join(f"{k} ({earlier.get(k)!r}, here {run[k]!r})" for k in mismatch)
            + "; its ratios would not compare with this run's. Write another file, or rerun every length."
        )
    command = command_line()
    kept = [r for r in (earlier or {}).get("rows", []) if r["length"] not in lengths]
    commands = [*(earlier or {}).get("commands", []), command]
    rows = []
    for length in lengths:
        ids = torch.randint(
            10, lm.model.config.vocab_size, (1, length), device=device, generator=torch.Generator(device).manual_seed(0)
        )
        times: dict[str, list[float]] = {n: [] for n in methods}
        peaks: dict[str, int | None] = {}
        # warm-up (kernels, caches of frequencies) past twice the trained context, so that the
        # paths beyond it (LongHeads' chunk selection, SelfExtend's grouped keys) are warm too: a
        # 256-token warm-up left LongHeads' first timed prefill at 8k 1.4x its second
        warm = ids[:, : min(length, 2 * lm.model.config.max_position_embeddings)]
        for name, m in methods.items():
            prefill(lm, m, length, warm)
        for _ in range(a.repeats):  # alternate, so drift hits every method alike
            for name, m in methods.items():
                seconds, peaks[name] = prefill(lm, m, length, ids, clock)
                times[name].append(seconds)
        if not device.startswith("cuda"):
            peaks = {name: cpu_peak_bytes(lm, m, length, ids) for name, m in methods.items()}
        base = statistics.median(times["baseline"])
        for name in methods:
            t = statistics.median(times[name])
            peak, base_peak = peaks[name], peaks["baseline"]
            rows.append(
                {
                    "method": name,
                    "length": length,
                    "seconds": round(t, 4),
                    "tokens_per_s": round(length / t),
                    "slowdown_vs_baseline": round(t / base, 3),
                    "peak_mem_bytes": peak,
                    "peak_mem_vs_baseline": round(peak / base_peak, 3) if peak and base_peak else None,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        if a.json:  # after each length: a run stopped at its time limit keeps what it measured
            every = sorted(kept + rows, key=lambda r: r["length"])  # stable: each length's methods in run order
            out = {**run, "commands": commands, "rows": every, "memory_slope": memory_slopes(every)}
            Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n{a.model} ({what}) on {dev}\n")
    print("| method | length | tokens/s | slowdown vs baseline | peak memory vs baseline |")
    print("|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_mem_vs_baseline']:.2f}x" if r["peak_mem_vs_baseline"] else "n/a"
        print(f"| {r['method']} | {r['length']} | {r['tokens_per_s']:,} | {r['slowdown_vs_baseline']:.2f}x | {mem} |")
    slopes = memory_slopes(kept + rows)
    if slopes:
        print("\nPeak memory vs context, log-log slope (1 = linear):")
        for name, slope in slopes.items():
            print(f"  {name}: {slope:.2f}")


def command_line() -> str:
    """This run's command and commit, for a benchmark's JSON (marked when the tree had changes)."""
    from harness import provenance

    commit = provenance.git_state()
    command = " ".join(["python", *sys.argv]) + f" (commit {(commit['git_commit'] or '?')[:7]}"
    return command + (", uncommitted changes)" if commit["git_dirty"] else ")")


def header(model: str, lm, device: str) -> dict:
    """What ran, for a benchmark's JSON: the model as named and what it is, device, torch, dtype."""
    dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    return {"model": model, "model_is": describe(lm), "device": device, "torch": torch.__version__, "dtype": dtype}


def describe(lm) -> str:
    """What the model is, for the reader of the table: the zoo's label, or the shapes of a
    benchmarks/random_checkpoint.py checkpoint."""
    if lm.loaded.zoo:
        return "embedded zoo model, not a real LLM"
    return getattr(lm.model.config, "benchmark_shape", None) or "checkpoint"


def memory_slopes(rows: list[dict]) -> dict[str, float]:
    """Least-squares slope of log(peak memory) on log(length), per method with two lengths or more."""
    import math

    out = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        pts = [
            (math.log(r["length"]), math.log(r["peak_mem_bytes"]))
            for r in rows
            if r["method"] == name and r["peak_mem_bytes"]
        ]
        if len(pts) > 1:
            mx, my = (sum(p[i] for p in pts) / len(pts) for i in (0, 1))
            out[name] = round(sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts), 3)
    return out


if __name__ == "__main__":
    main()
