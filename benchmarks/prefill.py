"""Prefill speed and memory of the long-context methods: tokens/s of one forward pass over L tokens
(building the KV cache, as a real prefill does) for each method, divided by the baseline's tokens/s
at the same length, measured alternately in this process (median of --repeats after a warm-up).
Peak memory is PyTorch's peak allocation on a GPU (on CPU it is not measured per method: the
process's resident set does not reset). Not a test: run `make bench` or this file.

    python benchmarks/prefill.py [--lengths 8192,32768] [--device auto] [--json FILE]

The issue's goals: position-remapping methods (selfextend, dca) at most 2.5x slower than baseline,
and peak memory at 32k within 1.5x of baseline. Zoo model: the ratios describe the methods'
attention code on a 2.6M-parameter model, not a real LLM's end-to-end prefill.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

METHODS = ["baseline", "pi", "ntk", "dynamic_ntk", "yarn", "llama3", "selfextend", "dca", "longheads"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def prefill(lm, method, length: int, ids: torch.Tensor) -> tuple[float, int | None]:
    """Seconds for one forward over `ids` with the method applied, and the peak GPU bytes."""
    from transformers import DynamicCache

    from harness.interfaces import MethodContext
    with method.apply(lm, MethodContext(target_length=length)):
        if lm.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _sync(lm.device)
        t0 = time.perf_counter()
        lm.model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
        _sync(lm.device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if lm.device.startswith("cuda") else None
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
    a = ap.parse_args()
    device = pick_device(a.device)
    lm = LM(load(a.model, device))
    methods = {n: registry.method(n)() for n in a.methods.split(",")}
    rows = []
    for length in (int(x) for x in a.lengths.split(",")):
        ids = torch.randint(10, lm.model.config.vocab_size, (1, length), device=device,
                            generator=torch.Generator(device).manual_seed(0))
        times: dict[str, list[float]] = {n: [] for n in methods}
        peaks: dict[str, int | None] = {}
        for name, m in methods.items():             # warm-up (kernels, caches of frequencies)
            prefill(lm, m, length, ids[:, :256])
        for _ in range(a.repeats):                   # alternate, so drift hits every method alike
            for name, m in methods.items():
                seconds, peaks[name] = prefill(lm, m, length, ids)
                times[name].append(seconds)
        base = statistics.median(times["baseline"])
        for name in methods:
            t = statistics.median(times[name])
            peak, base_peak = peaks[name], peaks["baseline"]
            rows.append({"method": name, "length": length, "seconds": round(t, 4),
                         "tokens_per_s": round(length / t), "slowdown_vs_baseline": round(t / base, 3),
                         "peak_mem_bytes": peak,
                         "peak_mem_vs_baseline": round(peak / base_peak, 3) if peak and base_peak else None})
            print(json.dumps(rows[-1]), flush=True)
    dev = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"\n{a.model} (embedded zoo model) on {dev}\n")
    print("| method | length | tokens/s | slowdown vs baseline | peak memory vs baseline |")
    print("|---|---|---|---|---|")
    for r in rows:
        mem = "n/a (CPU)" if r["peak_mem_vs_baseline"] is None else f"{r['peak_mem_vs_baseline']:.2f}x"
        print(f"| {r['method']} | {r['length']} | {r['tokens_per_s']:,} | {r['slowdown_vs_baseline']:.2f}x | {mem} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "device": dev, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
