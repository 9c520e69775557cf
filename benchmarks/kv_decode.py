"""KV-cache decoding speed: ms per decoded token of each kv method at a long context and a small
budget, as a ratio to the dense cache through the same loop (the kv engine at budget 1.0) measured
in this process, and the share of decoding time spent in the method's own bookkeeping (scores,
eviction, re-rotation, quantization: `kv.policy_s`). Not a test: run it niced.

    nice -n 10 python benchmarks/kv_decode.py [--model zoo:tiny-llama] [--context 16384[,32768...]] [--budget 0.1]
                                              [--steps 32] [--blocks 4] [--methods streaming_llm,snapkv,h2o]
                                              [--device cpu|cuda]

Goals (issue 4): decode time ≤ 0.4 × dense for the eviction methods at 16k and budget 0.1; the
bookkeeping ≤ 20 % of decode time. The dense cache is prefilled once; each method prefills the same
prompt, then its decoding and the dense cache's alternate in `--blocks` blocks of steps/blocks
tokens, so that both see the same load on a shared machine: the ratio is the method's total
decoding time over the dense cache's in the interleaved blocks.

The floor (issue 18): decoding one token is memory-bound on a GPU, so a cache that keeps a fraction
of the tokens can at best take dense time x (weight bytes + kept KV bytes) / (weight bytes + full KV
bytes), the bytes each step must read. `floor` is that fraction, `vs_floor` = vs_dense / floor
(goal: at most 1.3). Weight bytes count every parameter a step reads: all but the input embedding,
of which it reads one row (unless tied to the output head)."""

from __future__ import annotations

import argparse
import json
import os

import torch

EVICTION = ["streaming_llm", "snapkv", "h2o", "scissorhands", "vatp", "keyformer", "cam", "kvmerger", "fastgen"]


def timed_block(lm, driver, run, logits, steps: int) -> tuple[torch.Tensor, dict]:
    """Greedy-decode `steps` tokens of `run`; the telemetry deltas of decode time, steps and policy."""
    keys = ("kv.decode_s", "kv.decode_steps", "kv.policy_s")
    before = {k: lm.telemetry[k] for k in keys}
    for _ in range(steps):
        logits = driver.decode(run, [int(logits.argmax())])[-1]
    return logits, {k: lm.telemetry[k] - before[k] for k in keys}


def interleaved(lm, m, prompt: list[int], budget: float, dense, steps: int, blocks: int):
    """(ms per token, dense ms per token in the same blocks, bookkeeping share, kept tokens) of one
    method; `dense` = [Run, last logits] of the dense cache, decoded further here."""
    from harness.interfaces import MethodContext
    from harness.lm import KVRequest

    total, dense_total = {"kv.decode_s": 0.0, "kv.decode_steps": 0, "kv.policy_s": 0.0}, [0.0, 0]
    with m.apply(lm, MethodContext()) as driver, lm.kv_request_for(KVRequest(budget=budget)):
        run = driver.start()
        logits = driver.prefill(run, prompt, all_logits=False)[-1]
        kept = run.kept_tokens()
        for b in range(blocks):
            n = steps // blocks + (b < steps % blocks)
            dense[1], d = timed_block(lm, driver, dense[0], dense[1], n)  # the dense run, same loop
            dense_total[0] += d["kv.decode_s"]
            dense_total[1] += d["kv.decode_steps"]
            logits, d = timed_block(lm, driver, run, logits, n)
            total = {k: total[k] + d[k] for k in total}
    ms = 1000 * total["kv.decode_s"] / total["kv.decode_steps"]
    return ms, 1000 * dense_total[0] / dense_total[1], total["kv.policy_s"] / total["kv.decode_s"], int(kept)


def main() -> None:
    from harness import params, registry
    from harness.budget import kv_bytes
    from harness.lm import LM
    from harness.models import load
    from harness.synthetic import EVAL_SEED_BASE, Corpus

    from prefill import describe, header  # (this folder)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo:tiny-llama")
    ap.add_argument("--context", default="16384", help="context lengths, comma-separated")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timings then synchronize the GPU at each reading)")
    ap.add_argument("--methods", default=",".join(EVICTION))
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument(
        "--profile", default=None, help="write a table of the ops of 4 dense decoding steps at each context here"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    registry.load()
    lm = LM(load(args.model, args.device), batch_size=1)
    where = (
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
        if str(lm.device).startswith("cuda")
        else f"cpu, {args.threads} thread(s)"
    )
    corpus, text = Corpus(EVAL_SEED_BASE + 7), []
    contexts = [int(c) for c in args.context.split(",")]
    while len(text) < max(contexts):
        text += lm.encode(" " + corpus.text(50))
    build = lambda name: params.build(registry.method(name), {}, name)  # noqa: E731
    from harness.interfaces import MethodContext
    from harness.lm import KVRequest

    what = describe(lm)
    weights = weight_bytes(lm.model)
    rows = []
    for context in contexts:
        prompt = text[:context]
        # the dense cache: budget 1.0
        with build("snapkv").apply(lm, MethodContext()) as driver, lm.kv_request_for(KVRequest(budget=1.0)):
            run = driver.start()
            dense = [run, driver.prefill(run, prompt, all_logits=False)[-1]]
            if args.profile:  # (inside: the engine's attention is patched in only here)
                profile_dense(lm, driver, dense, f"{args.profile}.{context}.txt")
        full_kv = kv_bytes(lm.model.config, context, next(lm.model.parameters()).element_size())
        print(
            f"model {args.model} ({what}), context {context}, budget {args.budget}, {args.steps} steps in "
            f"{args.blocks} blocks interleaved with the dense cache's, {where}; weights read per step "
            f"{weights / 2**30:.2f} GiB, full KV {full_kv / 2**30:.2f} GiB"
        )
        print(
            f"{'method':<14} {'kept':>6} {'ms/token':>9} {'dense ms':>9} {'vs dense':>9} {'floor':>6} "
            f"{'vs floor':>9} {'bookkeeping':>12}"
        )
        for name in args.methods.split(","):
            ms, dense_ms, share, kept = interleaved(
                lm, build(name), prompt, args.budget, dense, args.steps, args.blocks
            )
            floor = (weights + full_kv * kept / context) / (weights + full_kv)
            print(
                f"{name:<14} {kept:>6} {ms:>9.2f} {dense_ms:>9.2f} {ms / dense_ms:>9.2f} {floor:>6.2f} "
                f"{ms / dense_ms / floor:>9.2f} {share:>11.1%}",
                flush=True,
            )
            rows.append(
                {
                    "method": name,
                    "context": context,
                    "kept_tokens": kept,
                    "ms_per_token": round(ms, 3),
                    "dense_ms_per_token": round(dense_ms, 3),
                    "vs_dense": round(ms / dense_ms, 3),
                    "floor": round(floor, 3),
                    "vs_floor": round(ms / dense_ms / floor, 3),
                    "bookkeeping_share": round(share, 3),
                }
            )
            if args.json:  # after each row: a run stopped at its time limit keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(
                        {
                            **header(args.model, lm, where),
                            "load_average": os.getloadavg(),
                            "weight_bytes_per_step": weights,
                            "budget": args.budget,
                            "steps": args.steps,
                            "blocks": args.blocks,
                            "rows": rows,
                        },
                        f,
                        indent=1,
                    )
        del dense, run
        if str(lm.device).startswith("cuda"):
            torch.cuda.empty_cache()


def profile_dense(lm, driver, dense, path: str) -> None:
    """The ops of 4 dense decoding steps by device (then CPU) time, for finding where a step's time
    goes when it is far above its memory-bound floor."""
    from torch.profiler import ProfilerActivity, profile

    cuda = str(lm.device).startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as p:
        dense[1], _ = timed_block(lm, driver, dense[0], dense[1], 4)
    table = p.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=40)
    with open(path, "w") as f:
        f.write(table)
    print(table[:4000])


def weight_bytes(model) -> int:
    """Bytes of the parameters one decoding step reads: all but the input embedding's unread rows."""
    emb = model.get_input_embeddings().weight
    tied = emb is model.get_output_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if tied or p is not emb)


if __name__ == "__main__":
    main()
