"""Harness overhead: wall time of `harness eval` on a needle configuration divided by the wall time
of the same generate calls issued directly through transformers, both measured in this process,
alternating, median of several repeats. Not a test: run `make bench` or this file.

    python benchmarks/overhead.py [--model zoo:tiny-llama] [--context 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def direct(folder: str, prompts: list[list[int]], batch: int, new_tokens: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            chunk = prompts[i : i + batch]
            width = max(map(len, chunk))  # left padding, as any batched generate needs
            ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
    return time.perf_counter() - t0


def via_harness(model: str, context: int, batch: int, out: str) -> float:
    from harness.cli import main

    t0 = time.perf_counter()
    code = main(
        [
            "eval",
            "--task",
            "needle",
            "--task-arg",
            f"context_length={context}",
            "--method",
            "baseline",
            "--model",
            model,
            "--device",
            "cpu",
            "--batch-size",
            str(batch),
            "--out",
            out,
            "--overwrite",
            "--no-progress",
        ]
    )
    assert code == 0
    return time.perf_counter() - t0


def main() -> None:
    from harness import params, registry
    from harness.interfaces import Task
    from harness.lm import LM
    from harness.models import load
    from harness.synthetic import sample_seed

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo:tiny-llama")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    loaded = load(a.model, "cpu")
    folder = loaded.model.name_or_path
    lm = LM(loaded, batch_size=a.batch_size)
    cls, _ = registry.task("needle")
    task: Task = params.build(cls, {"context_length": str(a.context)}, "needle")
    prompts = [task.build(lm, L, d, sample_seed(0, L, d, r))["ids"] for L, d, r in task.samples_plan(0)]
    print(
        f"{len(prompts)} prompts of {len(prompts[0])} tokens, batch {a.batch_size}, "
        f"{task.max_new_tokens} new tokens, {torch.get_num_threads()} threads, model {a.model}"
    )
    direct(folder, prompts[:8], a.batch_size, task.max_new_tokens)  # warm-up
    d_times, h_times = [], []
    with tempfile.TemporaryDirectory() as out:
        via_harness(a.model, a.context, a.batch_size, out)  # warm-up
        for _ in range(a.repeats):
            d_times.append(direct(folder, prompts, a.batch_size, task.max_new_tokens))
            h_times.append(via_harness(a.model, a.context, a.batch_size, out))
    d, h = statistics.median(d_times), statistics.median(h_times)
    print(f"direct transformers: median {d:.2f} s  {[round(x, 2) for x in d_times]}")
    print(f"harness eval:        median {h:.2f} s  {[round(x, 2) for x in h_times]}")
    print(f"overhead ratio (harness / direct): {h / d:.3f}")


if __name__ == "__main__":
    main()
