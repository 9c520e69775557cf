"""Training-step time of zoo recipes against a baseline recipe, in one process (not a test).

Issue 24 asks each zoo model to train within 90 minutes on the 2-core CPU. tiny-llama-alibi's card
records 121 minutes against tiny-llama's 59 for the same recipe with other position biases, both
measured as wall time on shared machines. This times one optimizer step of each recipe's model
through the trainer's own `train_step` (weighted loss, backward, gradient clipping, the recipe's
AdamW; a distilling recipe's teacher included) with `harness zoo train`'s thread count,
deterministic mode and attention override, on the same random batch of 8,192 tokens at each
length; the recipes take turns, so a change in the machine's load reaches all of them. It reports
the median of --reps steps per recipe and length, and each recipe's ratio to the first.

    python benchmarks/zoo_step.py [--recipes tiny-llama,tiny-llama-alibi] [--lengths 64,128,256,512] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from harness.zoo.build import TRAIN_THREADS
    from harness.zoo.tokenizer import build_tokenizer
    from harness.zoo.train import RECIPES, build_model, load_teacher, optimizer, position_encoding, train_step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="tiny-llama,tiny-llama-alibi", help="the first is the baseline")
    ap.add_argument("--lengths", default="64,128,256,512", help="sequence lengths (tokens per step stay 8,192)")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per recipe and length (after one warm-up)")
    args = ap.parse_args()
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
    except ValueError:
        ap.error(f"--lengths takes integers separated by commas, got {args.lengths!r}")
    if any(not 1 <= n <= 8192 for n in lengths):
        ap.error("--lengths must lie in [1, 8192] (a step holds 8,192 tokens)")
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)  # as train() runs on the CPU
    torch.utils.deterministic.fill_uninitialized_memory = False
    tok = build_tokenizer()  # the current zoo generation's, as `harness zoo train` uses
    torch.manual_seed(0)
    models = {}
    for n in names:
        r = RECIPES[n]
        m = build_model(r, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id).train()
        models[n] = (m, r, optimizer(r, m), load_teacher(r))
    print(f"{TRAIN_THREADS} threads, torch {torch.__version__}, median of {args.reps} steps of 8,192 tokens")
    print(
        "| length | "
        + " | ".join(f"{n} s/step" for n in names)
        + " | "
        + " | ".join(f"{n} ÷ {names[0]}" for n in names[1:])
        + " |"
    )
    print("|---" * (2 * len(names)) + "|")
    for length in lengths:
        x = torch.randint(3, len(tok), (8192 // length, length))
        answers = torch.zeros_like(x, dtype=torch.bool)  # the mask only weights the loss: no cost
        times: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(args.reps + 1):
            for n in names:  # in turns: a load change reaches every recipe
                m, r, opt, teacher = models[n]
                with position_encoding(m):
                    t = time.perf_counter()
                    train_step(m, r, opt, x, answers, r.warmup, teacher)
                    if rep:  # the first step of each shape warms up
                        times[n].append(time.perf_counter() - t)
        med = {n: statistics.median(v) for n, v in times.items()}
        ratios = " | ".join(f"{med[n] / med[names[0]]:.2f}" for n in names[1:])
        print(f"| {length} | " + " | ".join(f"{med[n]:.2f}" for n in names) + f" | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
