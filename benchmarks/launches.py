"""Ops dispatched and host syncs per prefill, per method, against the baseline in the same run:
what a GPU's time depends on when a method's attention is cut into many small calls. Counted on
the CPU, so that a machine without a GPU can see it: LongHeads' first GPU run (an H100,
2026-12-05) took 68.8x the baseline's time at 32k with Llama-3-8B's heads while its CPU prefill
was near the baseline's, since a CPU pays little per op and a GPU about 5-20 microseconds per
kernel launch.

Every aten op dispatched during one prefill (`LM.prefill`: chunks of --prefill-chunk tokens, the
GPU default 2,048 unless set) is counted, views aside; a GPU runs about one kernel for each. A host sync is an
op whose result the host reads before it can go on (a GPU's queue drains there): `.item()`,
`int()` and `bool()` of a tensor, `.tolist()`, and the ops whose output size depends on the data
(nonzero, unique, masked_select, boolean indexing, repeat_interleave by a tensor).

The counts depend on the heads, the trained window, the context and the prefill chunk, not on
the hidden or head size: a random model with Llama-3-8B's 32 query and 8 KV heads, its 8k window
and one layer, but narrow, counts what the 8B model's layer would at a fraction of the CPU time:

    python benchmarks/random_checkpoint.py --out /tmp/l3-heads --layers 1 --dtype float32 \\
        --set hidden_size=512 --set intermediate_size=1024 --set vocab_size=4096
    python benchmarks/launches.py --model /tmp/l3-heads [--lengths 16384,32768] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves, tree_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefill import command_line, describe, header, prefill  # noqa: E402  (the same prefill as the timed benchmark)

SIZE_FROM_DATA = {"nonzero", "_unique2", "unique_consecutive", "unique_dim", "masked_select", "_local_scalar_dense"}


class Host(torch.Tensor):
    """A tensor that would be on the host if the model were on a GPU: what `.cpu()` returns while
    counting, and everything computed from it alone (torch_function carries the type to the results).
    Its ops launch nothing on a GPU, and reading it drains no queue."""


FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.eye}


class HostFactories(TorchFunctionMode):
    """A factory called without a device makes a host tensor on a GPU machine too: a Host one here."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # (torch.tensor of a tensor copies it where it is)
        made = func in FACTORIES and not any(isinstance(x, torch.Tensor) for x in args)
        if not made or (kwargs or {}).get("device") is not None:
            return func(*args, **(kwargs or {}))
        with _disable_current_modes():  # (made on the host: not an op of the GPU's)
            return func(*args, **(kwargs or {})).as_subclass(Host)


class Counting(TorchDispatchMode):
    """Counts the aten ops dispatched (views aside), and those that sync the host (SIZE_FROM_DATA, boolean
    indexing, repeat_interleave by a tensor) plus `.tolist()` calls, which dispatch nothing on CPU
    but copy to the host on a GPU.

    The model runs on the CPU here, so the host's own tensors (positions a method copied with
    `.cpu()` to choose its blocks from) would count as the GPU's: `.cpu()` gives a Host tensor
    instead, counted as one sync, the ops on Host tensors alone are neither ops nor syncs, and
    `.to(device)` of a Host tensor is an upload: one op, no sync, a model tensor again. An op
    that mixes a Host tensor of one dimension or more with a model tensor raises, as CUDA would
    (a CPU index into a GPU tensor aside, which CUDA copies over)."""

    def __init__(self):
        super().__init__()
        self.ops, self.syncs = Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        host = [isinstance(t, Host) for t in tensors]
        if tensors and all(host):  # (new_empty and the like would lose the type: kept here)
            return tree_map(
                lambda t: t.as_subclass(Host) if isinstance(t, torch.Tensor) else t, func(*args, **(kwargs or {}))
            )
        if any(host) and name != "index" and any(isinstance(t, Host) and t.dim() for t in tensors):
            raise RuntimeError(f"{func.__name__} mixes host and model tensors (on a GPU: a device mismatch)")
        if not func.is_view:  # (a view launches nothing)
            self.ops[name] += 1
        if name in SIZE_FROM_DATA or (
            name == "repeat_interleave" and isinstance(args[0], torch.Tensor) and len(args) == 1
        ):
            self.syncs[name] += 1
        elif name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            self.syncs["index (bool)"] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist, self._cpu, self._to = torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.to
        counter, tolist_, cpu_, to_, ops = self.syncs, self._tolist, self._cpu, self._to, self.ops

        # (the originals run without torch_function: HostFactories would hand them back to these)
        def tolist(t):
            if not isinstance(t, Host):
                counter["tolist"] += 1
            with torch._C.DisableTorchFunction():
                return tolist_(t)

        def cpu(t, *args, **kwargs):
            if isinstance(t, Host):
                return t
            counter["cpu"] += 1
            with torch._C.DisableTorchFunction(), _disable_current_modes():  # (the copy is the sync, not an op)
                return cpu_(t, *args, **kwargs).clone().as_subclass(Host)

        def to(t, *args, **kwargs):
            with torch._C.DisableTorchFunction():
                out = to_(t, *args, **kwargs)
            named = kwargs.get("device") is not None or any(isinstance(x, (str, torch.device)) for x in args)
            if not isinstance(t, Host):
                return out
            if not named:
                return out.as_subclass(Host)
            ops["upload"] += 1  # a copy to the device: launched, but nothing waits for it
            return out.as_subclass(torch.Tensor)

        torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.to = tolist, cpu, to
        self._factories = HostFactories()
        self._factories.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.to = self._tolist, self._cpu, self._to
        self._factories.__exit__(*exc)
        return super().__exit__(*exc)


@torch.no_grad()
def count(lm, method, length: int, ids: torch.Tensor) -> Counting:
    with Counting() as c:
        prefill(lm, method, length, ids)
    return c


def main() -> None:
    from harness import registry
    from harness.lm import ACCELERATOR_PREFILL_CHUNK, LM
    from harness.models import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a checkpoint folder (benchmarks/random_checkpoint.py) or zoo:NAME")
    ap.add_argument("--lengths", default="16384")
    ap.add_argument("--methods", default="baseline,selfextend,dca,longheads")
    ap.add_argument("--prefill-chunk", type=int, default=ACCELERATOR_PREFILL_CHUNK, help="tokens per forward")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args()
    lm = LM(load(a.model, "cpu"), prefill_chunk=a.prefill_chunk)
    methods = {n: registry.method(n)() for n in a.methods.split(",")}
    if "baseline" not in methods:
        ap.error("--methods must include baseline: the counts are reported against it")
    command = command_line()
    rows = []
    for length in (int(x) for x in a.lengths.split(",")):
        ids = torch.randint(10, lm.model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
        counts = {name: count(lm, m, length, ids) for name, m in methods.items()}
        base = counts["baseline"]
        for name, c in counts.items():
            ops, syncs = sum(c.ops.values()), sum(c.syncs.values())
            rows.append(
                {
                    "method": name,
                    "length": length,
                    "ops": ops,
                    "ops_vs_baseline": round(ops / sum(base.ops.values()), 2),
                    "host_syncs": syncs,
                    "top_ops": dict(c.ops.most_common(8)),
                    "syncs_by_kind": dict(c.syncs.most_common()),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        if a.json:
            run = {**header(a.model, lm, "cpu (ops counted, not timed)"), "prefill_chunk": lm.prefill_chunk}
            Path(a.json).write_text(json.dumps({**run, "command": command, "rows": rows}, indent=1) + "\n")
    print(f"\n{a.model} ({describe(lm)}), prefill chunk {lm.prefill_chunk}\n")
    print("| method | length | ops | ops vs baseline | host syncs |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['length']} | {r['ops']:,} | {r['ops_vs_baseline']:.2f}x | {r['host_syncs']:,} |")


if __name__ == "__main__":
    main()
