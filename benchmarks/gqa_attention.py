"""The kv engine's attention over its cache with grouped-query heads (harness/attention.py:
chunk_attend) against SDPA's own grouped-query path (`enable_gqa=True` with a chunk x cache
causal mask: the engine's path when issue 18's GPU run measured its dense decoding at 30x its
memory-bound time, a cause not confirmed there), timed alternately in this process on random tensors with Llama-3-8B's heads
(32 query heads, 8 KV heads, dimension 128). Cases: a decoding step (one query after n − 1 cached
slots) and a prefill chunk (--chunk queries after n − chunk slots), each with every slot held and
with a per-head held mask (head-adaptive eviction: a tenth of the slots per head). Not a test.

    python benchmarks/gqa_attention.py [--contexts 8192,32768] [--chunk 512] [--device cpu|cuda]
                                       [--dtype float32|bfloat16] [--threads 1] [--json FILE]

On CPU the times are CPU seconds of one thread (the clock of benchmarks/prefill.py --clock cpu);
on CUDA, wall seconds with the device synchronised, and the peak memory each call allocates."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from harness.attention import chunk_attend


def sdpa_gqa(q, k, v, n0: int, scaling: float, valid=None):
    """The engine's previous path: one SDPA call with enable_gqa, the chunk's causal mask over the
    whole cache and the held mask repeated per query head."""
    c, n = q.shape[2], k.shape[2]
    mask = None
    if c > 1:
        mask = torch.arange(n, device=q.device)[None, :] <= torch.arange(n0, n0 + c, device=q.device)[:, None]
    if valid is not None:
        held = valid.repeat_interleave(q.shape[1] // k.shape[1], dim=1)[:, :, None, :]
        mask = held if mask is None else mask & held
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True)


def timed(fn, device: str) -> tuple[float, int, torch.Tensor | None]:
    """(seconds, peak bytes allocated beyond those held before (CUDA only, else 0), output); an
    out-of-memory error gives (inf, 0, None)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated() if cuda else 0
    start = time.perf_counter() if cuda else time.process_time()
    try:
        out = fn()
    except torch.OutOfMemoryError:
        return float("inf"), 0, None
    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() - held, out
    return time.process_time() - start, 0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--chunk", type=int, default=512, help="prefill chunk (the harness: 512 on CPU, 2048 on a GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype, dev = getattr(torch, args.dtype), torch.device(args.device)
    heads, kv_heads, dim, scaling = 32, 8, 128, 128**-0.5
    where = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu, {args.threads} thread(s), CPU seconds"
    print(f"{where}, torch {torch.__version__}, {args.dtype}, {heads} query heads / {kv_heads} KV heads x {dim}")
    print(f"{'context':>8} {'case':<22} {'enable_gqa ms':>14} {'engine ms':>10} {'ratio':>6} {'max |diff|':>11}")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for n in [int(x) for x in args.contexts.split(",")]:
        k = torch.randn(1, kv_heads, n, dim, generator=gen, device=dev, dtype=dtype)
        v = torch.randn(1, kv_heads, n, dim, generator=gen, device=dev, dtype=dtype)
        for c in (1, args.chunk):
            q = torch.randn(1, heads, c, dim, generator=gen, device=dev, dtype=dtype)
            for held in (False, True):
                valid = None
                if held:  # a tenth of each head's slots, the chunk's own always
                    valid = torch.rand(1, kv_heads, n, generator=gen, device=dev) < 0.1
                    valid[:, :, n - c :] = True
                calls = {
                    "enable_gqa": lambda: sdpa_gqa(q, k, v, n - c, scaling, valid),
                    "engine": lambda: chunk_attend(q, k, v, n - c, scaling, valid),
                }
                times, peaks, outs = {name: [] for name in calls}, {}, {}
                with torch.no_grad():
                    for name, fn in calls.items():
                        timed(fn, args.device)  # warm-up
                    for _ in range(args.repeats):  # alternately, so that both see the same load
                        for name, fn in calls.items():
                            s, peak, outs[name] = timed(fn, args.device)
                            times[name].append(s)
                            peaks[name] = peak
                old, new = (1000 * statistics.median(times[name]) for name in calls)
                diff = (
                    float((outs["enable_gqa"].float() - outs["engine"].float()).abs().max())
                    if outs["enable_gqa"] is not None and outs["engine"] is not None
                    else float("nan")  # (an out-of-memory error)
                )
                case = f"{'decode' if c == 1 else f'chunk of {c}'}, {'held 10%' if held else 'all held'}"
                print(f"{n:>8} {case:<22} {old:>14.2f} {new:>10.2f} {new / old:>6.2f} {diff:>11.2e}", flush=True)
                rows.append(
                    {
                        "context": n,
                        "queries": c,
                        "held": "10% per head" if held else "all",
                        "enable_gqa_ms": round(old, 3),
                        "engine_ms": round(new, 3),
                        "ratio": round(new / old, 3),
                        "max_abs_diff": diff,
                        **(
                            {"enable_gqa_peak_bytes": peaks["enable_gqa"], "engine_peak_bytes": peaks["engine"]}
                            if dev.type == "cuda"
                            else {}
                        ),
                    }
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "torch": torch.__version__, "dtype": args.dtype, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
