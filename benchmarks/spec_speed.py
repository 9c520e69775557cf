"""Speculative decoding speed: tokens/s of each method of the spec family relative to the
`autoregressive` baseline and to `hf_assisted` (transformers' assisted generation, same draft and γ),
all measured in this process, alternating method by method per prompt, after warm-ups, prefill
included, at a fixed thread count (Spec-Bench's protocol with time.perf_counter on CPU). Methods
whose fit stage has no artifact yet are listed as skipped. Not a test: run this file.

    python benchmarks/spec_speed.py [--model zoo:tiny-llama] [--prompts 4] [--new-tokens 64]
        [--repeats 3] [--threads 1] [--temperature 0] [--methods sps,hf_assisted,...] [--method-arg m.k=v]
"""

from __future__ import annotations

import argparse
import time

import torch

DEFAULT = "autoregressive,hf_assisted,sps,specinfer,rest,eagle,eagle2,distillspec"


def main() -> None:
    from harness import fitting, params, registry
    from harness.errors import UserError
    from harness.interfaces import MethodContext
    from harness.lm import LM
    from harness.models import load
    from harness.synthetic import Corpus, sample_seed

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo:tiny-llama")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmups", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--methods", default=DEFAULT)
    ap.add_argument("--method-arg", action="append", default=[], metavar="METHOD.KEY=VALUE")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    loaded = load(a.model, "cpu")
    lm = LM(loaded, batch_size=1)
    prompts = [lm.encode(Corpus(sample_seed(0, "bench", i)).text(4)) for i in range(a.prompts)]
    margs: dict[str, dict[str, str]] = {}
    for item in a.method_arg:
        key, _, value = item.partition("=")
        name, _, field = key.partition(".")
        margs.setdefault(name, {})[field] = value
    methods, skipped = {}, {}
    for name in a.methods.split(","):
        m = params.build(registry.method(name), margs.get(name, {}), f"method {name}")
        try:
            fitting.attach_artifact(m, lm, MethodContext(), loaded.sha256, a.model)
        except UserError as e:
            skipped[name] = str(e).split(":")[0] + ": no fit artifact (run harness fit first)"
            continue
        methods[name] = m
    decoders = {}
    for name, m in methods.items():  # each method's decoding function, set up once (drafts, datastore)
        with m.apply(lm, MethodContext()):
            decoders[name] = lm.generate_batch_hook
    rates: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, list] = {name: [] for name in methods}

    def run(name, ids, seed):
        with lm.batch_hooks(generate_batch=decoders[name]):
            t0 = time.perf_counter()
            out = lm.generate([ids], a.new_tokens, temperature=a.temperature, seed=seed)[0]
            return out, time.perf_counter() - t0

    for name in methods:  # warm-ups: full passes over the first prompt
        for _ in range(a.warmups):
            run(name, prompts[0], 0)
    for i, ids in enumerate(prompts):
        tokens = {n: 0 for n in methods}
        wall = {n: 0.0 for n in methods}
        for r in range(a.repeats):
            for name in methods:  # alternate methods within a repeat against drift
                out, w = run(name, ids, 1000 * i + r)
                tokens[name] += len(out)
                wall[name] += w
                if r == 0:
                    outputs[name].append(out)
        for name in methods:
            rates[name].append(tokens[name] / wall[name])
    mean = {n: sum(v) / len(v) for n, v in rates.items()}
    print(
        f"model {a.model}  prompts {a.prompts}  new tokens {a.new_tokens}  repeats {a.repeats}  "
        f"threads {a.threads}  temperature {a.temperature:g}  torch {torch.__version__}"
    )
    print(f"{'method':16s} {'tokens/s':>9s} {'vs autoregressive':>18s} {'vs hf_assisted':>15s}  same greedy output")
    for name in methods:
        vs_ar = mean[name] / mean["autoregressive"] if "autoregressive" in mean else float("nan")
        vs_hf = mean[name] / mean["hf_assisted"] if "hf_assisted" in mean else float("nan")
        same = (
            (outputs[name] == outputs["autoregressive"]) if a.temperature == 0 and "autoregressive" in outputs else "-"
        )
        print(f"{name:16s} {mean[name]:9.1f} {vs_ar:18.3f} {vs_hf:15.3f}  {same}")
    for name, why in skipped.items():
        print(f"{name:16s} skipped: {why}")
    if "zoo" in a.model:
        print(
            "zoo models are tiny reference models; on a CPU their draft forwards cost nearly as much as the "
            "target's, so these ratios say nothing about real LLMs on a GPU."
        )


if __name__ == "__main__":
    main()
