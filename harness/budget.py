"""Know before you wait: the memory a cell needs, the batch size it runs at, and how long it takes.

`plan` runs after the methods are applied and before the task, on the task's declared workload
(the prompt lengths and generation budgets of its samples):
- memory: an estimate per sequence (the KV cache of the whole context, the per-layer temporaries
  of attention over it, and the activations of one prefill chunk) against a cap — half of the free
  memory unless the user sets one. A cell whose batch of one cannot fit stops here, before any
  work, with the estimate and what is available.
- batch size `auto`: for short prompts the fixed default (8, the historical value: results must
  not depend on the machine a CI gate runs on); for long prompts the batch with the best measured
  throughput among those that fit (on a CPU, where long prompts are compute-bound, that is 1).
- time: two timed prefills of the model with the methods applied (short and longer), fitted by
  a + c n² (attention is quadratic in the prompt, the rest linear), summed over the workload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.errors import UserError
from harness.provenance import device_clock

LONG_PROMPT = 4096  # tokens: beyond this a cell is "long" (measured batch, time estimate)
SHORT_BATCH = 8  # auto's batch size for short prompts (the historical default)
CANDIDATES = (1, 2, 4, 8)  # batch sizes auto measures for long prompts
EXTRAPOLATION_WARNING = 4.0  # warn when the context exceeds the trained positions by more than this


def available_bytes(device: str) -> int:
    """Free memory now: the accelerator's free memory, or on the CPU the kernel's MemAvailable
    (bounded by the cgroup's limit where one is set)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = _meminfo("MemAvailable")
    limit = _cgroup_room()
    return min(x for x in (free, limit) if x is not None) if (free or limit) else 0


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def _shape(config) -> tuple[int, int, int, int]:
    """(layers, query heads, KV heads, head dim)."""
    heads = config.num_attention_heads
    return (
        config.num_hidden_layers,
        heads,
        getattr(config, "num_key_value_heads", None) or heads,
        getattr(config, "head_dim", None) or config.hidden_size // heads,
    )


def kv_bytes(config, length: int, dtype_bytes: int) -> int:
    layers, _, kv_heads, head_dim = _shape(config)
    return 2 * layers * kv_heads * head_dim * length * dtype_bytes


def sequence_bytes(config, length: int, chunk: int, dtype_bytes: int) -> int:
    """Estimated memory of one sequence of `length` tokens: its KV cache in every layer, the
    attention temporaries of one layer over the whole context (keys and values repeated to the
    query heads, a re-rotated copy of the keys for the position-remapping methods), and one
    prefill chunk's activations and attention mask (bytes)."""
    _, heads, _, head_dim = _shape(config)
    hidden, inter = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    chunk = min(chunk or length, length)
    kv = kv_bytes(config, length, dtype_bytes)
    attention = 4 * heads * head_dim * length * dtype_bytes
    activations = chunk * (8 * hidden + 3 * inter) * dtype_bytes + chunk * length  # + a bool mask block
    logits = chunk * config.vocab_size * 4
    return kv + attention + activations + logits


@dataclass
class Plan:
    batch_size: int
    batch_rule: str  # how it was chosen
    prompts: int
    tokens: int  # prompt + generated tokens of the workload
    need_bytes: int  # estimated peak for the chosen batch (beyond the weights)
    cap_bytes: int
    available_bytes: int
    estimated_seconds: float | None
    context_factor: float  # longest prompt / the model's trained maximum positions

    def provenance(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "batch_rule": self.batch_rule,
            "estimated_peak_bytes": self.need_bytes,
            "memory_cap_bytes": self.cap_bytes,
            "estimated_seconds": None if self.estimated_seconds is None else round(self.estimated_seconds, 1),
        }

    def summary(self) -> str:
        eta = "" if self.estimated_seconds is None else f"; estimated {duration(self.estimated_seconds)}"
        return (
            f"{self.prompts} prompts, {self.tokens:,} tokens; batch {self.batch_size} ({self.batch_rule}); "
            f"memory ≈ {_gib(self.need_bytes)} of a {_gib(self.cap_bytes)} cap{eta}"
        )


def plan(
    lm, workload: list[tuple[int, int]], requested: int | str, cap_bytes: int | None, resumed: int | None = None
) -> Plan:
    """Choose the batch size and estimate the time of a workload [(prompt tokens, new tokens)].
    resumed: the batch size of the earlier attempt a resumed cell replays (harness.journal); auto
    keeps it, since batches of another size would not be found in the journal."""
    import torch

    cfg = lm.model.config
    dtype_bytes = torch.finfo(next(lm.model.parameters()).dtype).bits // 8
    longest = max(p + n for p, n in workload)
    free = available_bytes(lm.device)
    cap = cap_bytes if cap_bytes is not None else free // 2
    per_seq = sequence_bytes(cfg, longest, lm.prefill_chunk, dtype_bytes)
    fits = cap // per_seq
    if fits < 1:
        raise UserError(
            f"a prompt of {longest:,} tokens needs about {_gib(per_seq)} beyond the weights (KV cache "
            f"{_gib(kv_bytes(cfg, longest, dtype_bytes))}), "
            f"but the memory cap is {_gib(cap)} ({_gib(free)} free on {lm.device}); raise --memory-cap, "
            f"lower --prefill-chunk, or use a shorter context"
        )
    is_long = longest > LONG_PROMPT
    timing = _warmup(lm, longest) if is_long else None
    if requested != "auto":
        batch, rule = int(requested), "--batch-size"
        if batch > fits:
            raise UserError(
                f"--batch-size {batch} needs about {_gib(batch * per_seq)} for prompts of "
                f"{longest:,} tokens, over the memory cap of {_gib(cap)} (at most {fits} fit); "
                f"use --batch-size auto or a smaller batch"
            )
    elif resumed:
        batch, rule = min(resumed, fits), f"auto: {min(resumed, fits)}, the batch of the attempt this run resumes"
    elif not is_long:
        batch, rule = min(SHORT_BATCH, fits), f"auto: {SHORT_BATCH} for prompts ≤ {LONG_PROMPT:,} tokens"
        if batch < SHORT_BATCH:
            rule = f"auto: {batch}, the most that fit under the cap"
    else:
        batch, rule = _fastest_batch(lm, [b for b in CANDIDATES if b <= min(fits, len(workload))], timing)
    seconds = None if timing is None else sum(_sample_seconds(timing, p, n) for p, n in workload)
    tokens = sum(p + n for p, n in workload)
    return Plan(
        batch,
        rule,
        len(workload),
        tokens,
        batch * per_seq,
        cap,
        free,
        seconds,
        longest / max(1, lm.original_max_length),
    )


@dataclass
class _Timing:
    a: float  # seconds per token (the linear part: projections, MLP)
    c: float  # seconds per token pair (attention)
    step: float  # seconds of one single-token forward (decoding's fixed cost)
    n2: int
    t2: float  # seconds of the n2-token prefill at batch 1


def _warmup(lm, longest: int) -> _Timing:
    n1, n2 = min(longest, 2048), min(longest, 16384)  # long enough that attention's share shows
    t1 = _time_prefill(lm, 1, n1)
    t2 = _time_prefill(lm, 1, n2)
    step = _time_prefill(lm, 1, 1)
    if n2 > n1:  # t = a n + c n^2 through both points (c >= 0: noise may make it negative)
        c = max(0.0, (t2 / n2 - t1 / n1) / (n2 - n1))
        a = max(0.0, t1 / n1 - c * n1)
    else:
        a, c = t1 / n1, 0.0
    return _Timing(a, c, step, n2, t2)


def _sample_seconds(t: _Timing, prompt: int, new: int) -> float:
    return t.a * prompt + t.c * prompt * prompt + new * (t.step + 2 * t.c * prompt)


def _fastest_batch(lm, candidates: list[int], timing: _Timing) -> tuple[int, str]:
    """The smallest batch within 10 % of the best measured throughput (tokens/s), measured at the
    warm-up's longer length (where attention's share is closer to the task's); doubling stops as
    soon as it gains less than 10 % (on a CPU, long prompts are compute-bound: batch 1)."""
    rates = {1: timing.n2 / timing.t2}
    for b in candidates[1:]:
        rates[b] = b * timing.n2 / _time_prefill(lm, b, timing.n2)
        if rates[b] < 1.1 * rates[b // 2]:
            break
    best = max(rates.values())
    batch = min(b for b, r in rates.items() if r >= 0.9 * best)
    shown = ", ".join(f"{b}: {r:,.0f}" for b, r in sorted(rates.items()))
    return batch, f"auto: smallest within 10 % of the fastest that fits, tokens/s at {timing.n2:,} tokens {shown}"


def _time_prefill(lm, batch: int, n: int) -> float:
    """Seconds of one chunked prefill of `batch` random prompts of n tokens (the faster of two runs
    for short prompts, where the first pays for allocation)."""
    import torch

    vocab = lm.model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(min(8, vocab - 1), vocab, (batch, n), generator=gen).to(lm.device)
    mask = torch.ones_like(ids)
    clock = device_clock(lm.device)
    best = math.inf
    for _ in range(2 if batch * n < 4096 else 1):
        t0 = clock()
        lm.prefill(ids, mask)
        best = min(best, clock() - t0)
    return best


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def plan_cell(cell, lm, budget) -> dict:
    """Memory check, batch size and time estimate of the cell's workload (the functions above), before
    the task runs; the warm-up's forwards are not counted in the telemetry. Returns what the record
    keeps of it."""
    requested, cap, log = budget
    work = cell.task.workload(cell.limit)
    if not work:
        return {}
    saved = dict(lm.telemetry)
    try:
        made = plan(lm, work, requested, cap, lm.journal.batch_size() if lm.journal else None)
    finally:  # in place: methods hold this Counter
        lm.telemetry.clear()
        lm.telemetry.update(saved)
    lm.batch_size = made.batch_size
    label = f"{cell.task_label} · {cell.method_name} · {cell.model}"
    if made.estimated_seconds is not None or made.batch_size < _asked_batch(budget):  # long or squeezed
        log(f"{label}: {made.summary()}")
    resolved = {}
    if made.context_factor > EXTRAPOLATION_WARNING:
        log(
            f"warning: {label}: the context is {round(made.context_factor, 1):g}x the model's trained length "
            f"({lm.original_max_length:,} positions); expect extrapolation, not a property of the method alone"
        )
        resolved = {
            "context_over_trained_length": round(made.context_factor, 2),
            "trained_length": lm.original_max_length,
        }
    return {"provenance": dict(made.provenance(), prefill_chunk=lm.prefill_chunk), "resolved": resolved}


def _asked_batch(budget) -> int:
    """The batch size a cell asked for (auto: the short-prompt default)."""
    return SHORT_BATCH if budget[0] == "auto" else int(budget[0])
