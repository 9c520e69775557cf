"""Every kv method on the CPU and on an accelerator, side by side: the same prompt, budget and fed
tokens (teacher-forced, so both sides decode the same sequence); per method the largest logit
difference and whether every layer and head kept the same positions. The CPU side is the
reference the unit tests pin down; this checks that nothing in the engine depends on the device
(index tensors, CPU-drawn noise moved over, the all-layer eviction). TF32 is off on both sides.

    python scripts/kv_cross_device.py --device cuda [--methods h2o,cam] [--context 400] [--budget 0.3]
                                      [--steps 16] [--tolerance 1e-3]

Exit 0 when every method is within the tolerance and kept the same positions, 1 otherwise,
2 for bad arguments (e.g. no such device)."""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

KV = [
    "snapkv",
    "streaming_llm",
    "h2o",
    "kivi",
    "scissorhands",
    "fastgen",
    "vatp",
    "keyformer",
    "cam",
    "kvmerger",
    "gear",
    "kivi+intactkv",
    "svd_kv",
]


_FITTED: dict = {}  # method name -> (payload, folder): a fit stage runs once, on the CPU, and both sides use it


def attach_fit(m, cpu_lm) -> None:
    """Give a method with a fit stage (svd_kv's calibration) its artifact, fitted on the CPU."""
    import tempfile
    from pathlib import Path

    from harness.interfaces import MethodContext

    if not m.needs_fit(cpu_lm, MethodContext()):
        return
    if m.name not in _FITTED:
        payload, write = m.fit(cpu_lm, MethodContext(), log=lambda msg: None)
        folder = Path(tempfile.mkdtemp(prefix=f"kv_cross_device_{m.name}_"))
        if write:
            write(folder)
        _FITTED[m.name] = (payload, folder)
    m.use_artifact(*_FITTED[m.name])


def run_method(lm, name: str, prompt: list[int], feed: list[int], budget: float, cpu_lm=None):
    """(logits of every fed token [steps, vocab] on the CPU, sorted kept positions per layer and head)."""
    from harness import params, registry
    from harness.interfaces import MethodContext
    from harness.lm import KVRequest

    methods = [params.build(registry.method(p), {}, p) for p in name.split("+")]
    for m in methods:
        attach_fit(m, cpu_lm or lm)
    with contextlib.ExitStack() as stack:
        for m in methods:
            stack.enter_context(m.apply(lm, MethodContext()))
        driver = lm.kv_policy
        stack.enter_context(lm.kv_request_for(KVRequest(budget=budget)))
        run = driver.start()
        out = [driver.prefill(run, prompt, all_logits=False)[-1:]]
        out += [driver.decode(run, [t])[-1:] for t in feed]
    kept = [lc.pos[0].sort(dim=-1).values.cpu() for _, lc in sorted(run.layers.items())]
    return torch.cat(out).float().cpu(), kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--methods", default=",".join(KV))
    ap.add_argument("--context", type=int, default=400)
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    a = ap.parse_args()
    from harness import registry
    from harness.errors import UserError
    from harness.lm import LM
    from harness.models import load
    from harness.synthetic import EVAL_SEED_BASE, Corpus

    try:
        torch.empty(1, device=a.device)
    except (RuntimeError, AssertionError) as e:
        print(f"kv_cross_device: device {a.device!r} is not usable here: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    registry.load()
    lm = LM(load("zoo:tiny-llama", "cpu"), batch_size=1)
    on_device = LM(load("zoo:tiny-llama", a.device), batch_size=1)
    corpus, ids = Corpus(EVAL_SEED_BASE + 11), []
    while len(ids) < a.context + a.steps:
        ids += lm.encode(" " + corpus.text(50))
    prompt, feed = ids[: a.context], ids[a.context : a.context + a.steps]
    print(
        f"zoo:tiny-llama (a tiny reference model, not a real LLM), context {a.context}, budget {a.budget}, "
        f"{a.steps} fed tokens; cpu vs {a.device}"
    )
    print(f"{'method':<16} {'max |Δ logit|':>14} {'same kept positions':>20}")
    bad = 0
    for name in a.methods.split(","):
        try:
            ref, kept_ref = run_method(lm, name, prompt, feed, a.budget)
            got, kept_got = run_method(on_device, name, prompt, feed, a.budget, cpu_lm=lm)
        except UserError as e:
            print(f"kv_cross_device: {e}", file=sys.stderr)
            return 2
        diff = float((ref - got).abs().max())
        same = len(kept_ref) == len(kept_got) and all(torch.equal(x, y) for x, y in zip(kept_ref, kept_got))
        ok = diff <= a.tolerance and same
        bad += not ok
        print(f"{name:<16} {diff:>14.2e} {str(same):>20}{'' if ok else '   <- differs'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
