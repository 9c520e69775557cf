"""KV-cache decoding speed: ms per decoded token of each kv method at a long context and a small
budget, as a ratio to the dense cache through the same loop (the kv engine at budget 1.0) measured
in this process, and the share of decoding time spent in the method's own bookkeeping (scores,
eviction, re-rotation, quantization: `kv.policy_s`). Not a test: run it niced.

    nice -n 10 python benchmarks/kv_decode.py [--model zoo:tiny-llama] [--context 16384] [--budget 0.1]
                                              [--steps 32] [--methods streaming_llm,snapkv,h2o]

Goals (issue 4): decode time ≤ 0.4 × dense for the eviction methods at 16k and budget 0.1; the
bookkeeping ≤ 20 % of decode time. Dense and every method decode from the same prompt, after one
prefill each; the median of `--repeats` runs of `--steps` steps is reported."""
from __future__ import annotations

import argparse
import statistics

import torch

EVICTION = ["streaming_llm", "snapkv", "h2o", "scissorhands", "vatp", "keyformer", "cam", "kvmerger", "fastgen"]


def decode_ms(lm, m, prompt: list[int], budget: float, steps: int, repeats: int) -> tuple[float, float, int]:
    """(median ms per decoded token, bookkeeping share, kept tokens) for one method and budget."""
    from harness.interfaces import MethodContext
    times, shares = [], []
    with m.apply(lm, MethodContext()) as driver:
        lm.hints = {"kv_budget": budget}
        try:
            for _ in range(repeats):
                run = driver.start()
                logits = driver.prefill(run, prompt, all_logits=False)[-1]
                kept = run.kept_tokens()
                before = dict(lm.telemetry)
                for _ in range(steps):
                    logits = driver.decode(run, [int(logits.argmax())])[-1]
                d = {k: lm.telemetry[k] - before.get(k, 0) for k in ("kv.decode_s", "kv.decode_steps", "kv.policy_s")}
                times.append(1000 * d["kv.decode_s"] / d["kv.decode_steps"])
                shares.append(d["kv.policy_s"] / d["kv.decode_s"])
        finally:
            lm.hints = {}
    return statistics.median(times), statistics.median(shares), int(kept)


def main() -> None:
    from harness import params, registry
    from harness.lm import LM
    from harness.models import load
    from harness.synthetic import EVAL_SEED_BASE, Corpus

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo:tiny-llama")
    ap.add_argument("--context", type=int, default=16384)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(EVICTION))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    registry.load()
    lm = LM(load(args.model, "cpu"), batch_size=1)
    corpus, prompt = Corpus(EVAL_SEED_BASE + 7), []
    while len(prompt) < args.context:
        prompt += lm.encode(" " + corpus.text(50))
    prompt = prompt[:args.context]
    build = lambda name: params.build(registry.method(name), {}, name)   # noqa: E731
    dense, _, _ = decode_ms(lm, build("snapkv"), prompt, 1.0, args.steps, args.repeats)
    print(f"model {args.model} (zoo: a tiny reference model, not a real LLM), context {args.context}, "
          f"budget {args.budget}, {args.steps} steps x {args.repeats}, {args.threads} thread(s)")
    print(f"{'method':<14} {'kept':>6} {'ms/token':>9} {'vs dense':>9} {'bookkeeping':>12}")
    print(f"{'dense':<14} {args.context:>6} {dense:>9.2f} {1.0:>9.2f} {0.0:>11.1%}")
    for name in args.methods.split(","):
        ms, share, kept = decode_ms(lm, build(name), prompt, args.budget, args.steps, args.repeats)
        print(f"{name:<14} {kept:>6} {ms:>9.2f} {ms / dense:>9.2f} {share:>11.1%}", flush=True)


if __name__ == "__main__":
    main()
