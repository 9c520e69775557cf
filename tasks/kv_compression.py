"""KV-cache compression: quality, latency and memory of one method at several budgets, against the
dense cache measured in the same run."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field

import torch

from harness.errors import NoEffect, UserError
from harness.lm import KVRequest
from harness.interfaces import Metric, Task, TaskResult
from harness.provenance import device_clock
from harness.registry import register
from harness.synthetic import sample_seed
from harness.tasks.needle import Needle, depth_grid
from harness.tasks import _kv_report
from harness.tasks.perplexity import Perplexity

DENSE = 1.0
TOLERANCE = 0.02  # |kept fraction - budget| allowed on every sample
SINGLE = ("bits", "native")  # budget units of methods that run once, at their own setting
MODEL = "model"  # a method whose saving is the model's own layout (cla): its dense cache is the method's


def label(budget: float) -> str:
    return "dense" if budget == DENSE else f"{budget:g}"


def equal_memory_row(fractions: dict[str, float], rank_bytes: float) -> tuple[str, float] | None:
    """The compressed row (budget label, byte fraction) that holds the most KV bytes without
    exceeding rank_bytes of the dense cache's, or None when no row fits. fractions: each compressed
    row's kv_bytes_fraction (quantizers' with their scales and zero points). The bound is strict
    (only float noise is forgiven): token rows round their kept tokens up a little (0.5005 of the
    bytes at budget 0.5 on 512 tokens), so rank_bytes belongs between budgets, as the default 0.3
    sits above 0.25 and the 2-bit quantizers (about 0.26) and below the 4-bit ones (about 0.37)."""
    inside = [(name, f) for name, f in fractions.items() if f <= rank_bytes + 1e-12]
    return max(inside, key=lambda row: row[1]) if inside else None


@register
@dataclass
class KVCompression(Task):
    """For each budget (and the dense cache, in the same run and through the same loop):

    - needle_accuracy: RULER-style needle (the `needle` task's prompts), the context compressed
      before the question arrives (query-agnostic, as kvpress's pipeline); needle_accuracy_query_aware:
      the question inside the compressed prompt;
    - ppl_ratio (perplexity ÷ dense, per text) and kl_vs_dense (mean next-token KL(dense ‖ method))
      on held-out synthetic text: the first context_length − ppl_decode_tokens tokens are the
      compressed context, the rest is decoded one token at a time (decode-time compression);
    - nll: mean next-token NLL of the decoded tokens (absolute, so records of different models
      compare: a CLA model's dense cache against a base model's compressed one);
    - kept_fraction (kept context tokens per layer and head ÷ context tokens), kv_bytes,
      kv_bytes_per_token (kv_bytes ÷ context tokens: what compares across models at equal KV
      memory) and kv_bytes_fraction (counted at fp16; quantizers count bits, scales and zero points);
    - prefill_s, decode_ms_per_token and peak_mem_bytes at each timing length (a haystack prompt,
      timing_new_tokens greedy tokens); peak_mem_bytes is CUDA's allocator peak on GPU, the cache
      tensors held on CPU.

    The kept length is asserted on every call: within 0.02 of the budget for token budgets, of the
    byte fraction for byte budgets (svd_kv), at most the budget for capped adaptive ones (fastgen);
    quantizers (budget fixed by their bits) and presses without a ratio run once, at their own
    setting ("native"), and must hold fewer bytes (or tokens) than dense. A call where a policy ran but kept
    the wrong amount fails the run. Without a KV policy (e.g. `baseline`), only the dense row runs;
    so it does for a method whose saving is the model's layout (budget unit "model": cla, on a
    model trained with Cross-Layer Attention), through the kv engine, so its bytes are counted.
    Metric names carry the budget (`needle_accuracy@0.1`, `@dense`); unsuffixed ones are the mean
    over the budgets. `details.pareto` is the quality-vs-kept-fraction table. `image_tokens` puts
    that many image tokens (the model's image_token_id) after BOS in every context (`with_image`), for the multimodal
    policies (look_m) on a vision-language model; no pixels pass, so it tests their mechanism.

    The main metric, needle_accuracy_at_memory, compares methods at equal KV memory: the needle
    accuracy of the compressed row that holds the most KV bytes without exceeding rank_bytes of the
    dense cache's (`equal_memory_row`; at the defaults the 0.25 row of a token method, a 2-bit
    quantizer's native row). `details.ranked_row` names that row (budget label and byte fraction).
    Where no row fits (a 4-bit quantizer, a dense-only run, DMC's native rate) the metric is absent
    and ranked_row is None: the record is listed unranked, never ranked on an average over budgets
    (version 1's main metric, which let a quantizer's single row outrank the evictions' 0.1 rows)."""

    name = "kv_compression"
    version = "2"
    main_metric = "needle_accuracy_at_memory"
    summary = (
        "KV-cache compression: needle (query-agnostic/aware), ppl ratio, KL, kept fraction, bytes, latency vs dense"
    )
    smoke_args = {
        "context_length": "160",
        "budgets": "0.5",
        "needle_samples": "1",
        "ppl_samples": "1",
        "ppl_decode_tokens": "8",
        "timing_lengths": "128",
        "timing_new_tokens": "3",
        "max_new_tokens": "4",
        "rank_bytes": "0.6",  # so the smoke's one budget (0.5) is the ranked row of token methods
    }
    context_length: int = field(default=4096, metadata={"help": "tokens of the needle prompts and scored texts"})
    budgets: tuple[float, ...] = field(
        default=(0.1, 0.25, 0.5, 0.75), metadata={"help": "kept fractions (< 1) or counts"}
    )
    needle_samples: int = field(default=10, metadata={"help": "needle prompts (depths evenly 0-100 %)"})
    ppl_samples: int = field(default=4, metadata={"help": "held-out texts for ppl_ratio / kl_vs_dense"})
    ppl_decode_tokens: int = field(default=128, metadata={"help": "final tokens of each text decoded one at a time"})
    timing_lengths: tuple[int, ...] = field(default=(4096, 16384), metadata={"help": "context lengths timed"})
    timing_new_tokens: int = 32
    max_new_tokens: int = 12
    image_tokens: int = field(
        default=0,
        metadata={
            "omit_at_default": True,
            "help": "copies of a vision-language model's image token after BOS in every context",
        },
    )
    rank_bytes: float = field(
        default=0.3,
        metadata={
            "range": "(0, 1]",
            "help": "main metric: needle accuracy of the row with the most KV bytes up to this fraction of dense's",
        },
    )

    def __post_init__(self):
        if not self.budgets or any(not 0 < b for b in self.budgets) or DENSE in self.budgets:
            raise ValueError("budgets must be positive and not 1.0 (the dense baseline always runs)")
        if self.context_length < 64 or min(self.timing_lengths, default=64) < 64:
            raise ValueError("context_length and timing_lengths must be at least 64 tokens")
        if not 1 <= self.ppl_decode_tokens < self.context_length:
            raise ValueError("ppl_decode_tokens must be in [1, context_length)")
        if min(self.needle_samples, self.ppl_samples, self.timing_new_tokens, self.max_new_tokens) < 1:
            raise ValueError("sample counts and token counts must be positive")
        if self.image_tokens < 0:
            raise ValueError("image_tokens must be 0 or more")
        if not 0 < self.rank_bytes <= 1:  # the CLI's range check says so first; this guards the Python API
            raise ValueError(f"rank_bytes must be in (0, 1], got {self.rank_bytes}")

    def target_length(self) -> int:
        return max(self.context_length, *self.timing_lengths)

    @classmethod
    def report(cls, recs: list[dict]) -> str:
        """One table per context length, a row per configuration (seeds averaged), ranked by the
        needle accuracy at equal KV memory, with the row it was read from (tasks/_kv_report.py)."""
        return _kv_report.markdown(recs)

    # -- one call through the policy -----------------------------------------------------------
    def call(self, lm, unit: str, budget: float, fn, question: int = 0, decode: int | None = None) -> dict:
        """Run fn() under the budget's KV request; return its result and the call's telemetry, after
        checking the kept length."""
        # a quantizer's own row keeps its bits
        own = unit in SINGLE and budget != DENSE
        request = KVRequest(budget=None if own else budget, question_tokens=question, decode_tokens=decode)
        before = dict(lm.telemetry)
        lm.telemetry["kv.peak_cache_bytes"] = 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        clock = device_clock(lm.device)
        t0 = clock()
        with lm.kv_request_for(request):
            out = fn()
        wall = clock() - t0
        d = {k: lm.telemetry[k] - before.get(k, 0) for k in lm.telemetry if k.startswith("kv.")}
        d["kv.peak_cache_bytes"] = lm.telemetry["kv.peak_cache_bytes"]
        lm.telemetry["kv.peak_cache_bytes"] = max(before.get("kv.peak_cache_bytes", 0), d["kv.peak_cache_bytes"])
        stats = {"out": out, "wall_s": wall, "policy": bool(d.get("kv.calls"))}
        if stats["policy"]:
            ctx_tokens = d["kv.context_tokens"]
            stats.update(
                kept_fraction=d["kv.kept_tokens"] / ctx_tokens,
                kv_bytes=d["kv.bytes"] / d["kv.calls"],
                kv_bytes_per_token=d["kv.bytes"] / ctx_tokens,
                kv_bytes_fraction=d["kv.bytes"] / d["kv.dense_bytes"],
                prefill_s=d["kv.prefill_s"],
                decode_steps=d.get("kv.decode_steps", 0),
                decode_s=d.get("kv.decode_s", 0.0),
                policy_s=d.get("kv.policy_s", 0.0),
                peak=d["kv.peak_cache_bytes"],
            )
            self.check_kept(unit, budget, stats, ctx_tokens / d["kv.calls"])
        if torch.cuda.is_available():
            stats["peak"] = torch.cuda.max_memory_allocated()
        return stats

    @staticmethod
    def check_kept(unit: str, budget: float, s: dict, n_context: float) -> None:
        if budget == DENSE:
            ok, what = s["kept_fraction"] == 1.0 and s["kv_bytes_fraction"] == 1.0, "the whole dense cache"
        elif unit == "bits":
            ok, what = s["kept_fraction"] == 1.0 and s["kv_bytes_fraction"] < 1.0, "every token in fewer bytes"
        elif unit == "native":
            ok, what = min(s["kept_fraction"], s["kv_bytes_fraction"]) < 1.0, "fewer tokens or bytes than dense"
        elif unit == "cap":
            ok, what = 0 < s["kept_fraction"] <= budget + TOLERANCE, f"at most {budget:g} of the context"
        elif unit == "bytes":
            ok, what = abs(s["kv_bytes_fraction"] - budget) <= TOLERANCE, f"{budget:g} of the dense bytes"
        else:
            want = budget if budget <= 1 else min(1.0, budget / n_context)
            ok, what = abs(s["kept_fraction"] - want) <= TOLERANCE, f"{want:.3f} of the context"
        if not ok:
            raise NoEffect(
                f"kv_compression: at budget {label(budget)} the cache should hold {what}, but it kept "
                f"{s['kept_fraction']:.3f} of the tokens and {s['kv_bytes_fraction']:.3f} of the bytes"
            )

    # -- the run ---------------------------------------------------------------------------------
    def with_image(self, lm, ids: list[int]) -> list[int]:
        """ids with `image_tokens` image tokens after the prompt prefix, where a LLaVA prompt holds
        its image (576 tokens per image in LLaVA-1.5). The harness's LM API passes no pixels, so
        they enter the model as the image token's embedding: a multimodal KV policy (look_m) sees
        the prompt layout it acts on, but the numbers say nothing of image understanding."""
        if not self.image_tokens:
            return ids
        prefix = lm.prompt_prefix()
        at = len(prefix) if ids[: len(prefix)] == prefix else 0
        return ids[:at] + [lm.image_token_id] * self.image_tokens + ids[at:]

    def run(self, ctx) -> TaskResult:
        lm = ctx.lm
        if self.image_tokens and lm.image_token_id is None:
            raise UserError(
                f"kv_compression: image_tokens={self.image_tokens} needs a vision-language model with an "
                f"image token (transformers' LLaVA family); {type(lm.model).__name__} has none"
            )
        unit = next((m.budget_unit for m in ctx.methods if m.budget_unit), "tokens")
        probe = self.call(lm, unit, DENSE, lambda: lm.generate([lm.encode(" probe text") or [0]], 1))
        budgets = [DENSE] + (
            [] if not probe["policy"] or unit == MODEL else [0.0] if unit in SINGLE else list(self.budgets)
        )
        # quantizers run once at their own bit width, labelled "native" (budget 0.0 = the method's own)
        names = {b: "native" if unit in SINGLE and b == 0.0 else label(b) for b in budgets}
        n_needle = min(self.needle_samples, ctx.limit or self.needle_samples)
        n_text = min(self.ppl_samples, ctx.limit or self.ppl_samples)
        rows, per = [], {names[b]: {} for b in budgets}

        def add(b, metric, value):
            per[names[b]].setdefault(metric, []).append(value)

        needle = Needle(context_length=(self.context_length,), max_new_tokens=self.max_new_tokens)
        for i, depth in enumerate(ctx.iterate(depth_grid(n_needle), total=n_needle, desc="kv_compression/needle")):
            b_ = needle.build(
                lm, self.context_length, depth, sample_seed(ctx.seed, "kv", self.context_length, depth, i)
            )
            b_["ids"] = self.with_image(lm, b_["ids"])
            row = {
                "id": f"needle-{i}",
                "depth": depth,
                "prompt_tokens": len(b_["ids"]),
                "references": b_["refs"],
                "input_hash": hashlib.sha256(str(b_["ids"]).encode()).hexdigest()[:16],
            }
            for b in budgets:
                for kind, q in (("needle_accuracy", b_["query_tokens"]), ("needle_accuracy_query_aware", 0)):
                    if b == DENSE and kind.endswith("aware"):
                        continue  # dense: the question placement changes nothing
                    s = self.call(lm, unit, b, lambda: lm.generate([b_["ids"]], self.max_new_tokens), q)
                    pred = lm.decode(s["out"][0])
                    score = sum(r.lower() in pred.lower() for r in b_["refs"]) / len(b_["refs"])
                    for metric in [kind, "needle_accuracy_query_aware"] if b == DENSE else [kind]:
                        row[f"{metric}@{names[b]}"] = score
                        add(b, metric, score)
                    if s["policy"]:
                        row[f"kept_fraction@{names[b]}"] = s["kept_fraction"]
                        add(b, "kept_fraction", s["kept_fraction"])
                        add(b, "kv_bytes", s["kv_bytes"])
                        add(b, "kv_bytes_per_token", s["kv_bytes_per_token"])
                        add(b, "kv_bytes_fraction", s["kv_bytes_fraction"])
                    row[f"prediction@{names[b]}" + ("" if kind == "needle_accuracy" else "@qa")] = pred
            rows.append(row)

        texts = Perplexity(context_length=(self.context_length,), n_tokens=n_text * self.context_length)
        ids = texts.text_ids(lm, ctx.seed)
        for i in ctx.iterate(range(n_text), total=n_text, desc="kv_compression/ppl"):
            seq = ids[i * self.context_length : (i + 1) * self.context_length]
            if len(seq) <= self.ppl_decode_tokens:
                break
            seq = self.with_image(lm, seq)
            row = {
                "id": f"text-{i}",
                "tokens": len(seq),
                "input_hash": hashlib.sha256(str(seq).encode()).hexdigest()[:16],
            }
            x = torch.tensor([seq], device=lm.device)
            logp = {}
            for b in budgets:
                s = self.call(
                    lm, unit, b, lambda: lm.forward_logits(x, torch.ones_like(x)), decode=self.ppl_decode_tokens
                )
                scored = slice(len(seq) - self.ppl_decode_tokens - 1, len(seq) - 1)
                logp[b] = torch.log_softmax(s["out"][0, scored].float(), dim=-1)
                target = x[0, scored.start + 1 : scored.stop + 1]
                row[f"nll@{names[b]}"] = float(-logp[b].gather(1, target[:, None]).mean())
                add(b, "nll", row[f"nll@{names[b]}"])
            for b in budgets:
                ratio = math.exp(row[f"nll@{names[b]}"] - row["nll@dense"])
                kl = float((logp[DENSE].exp() * (logp[DENSE] - logp[b])).sum(-1).mean())
                row[f"ppl_ratio@{names[b]}"], row[f"kl_vs_dense@{names[b]}"] = ratio, kl
                add(b, "ppl_ratio", ratio)
                add(b, "kl_vs_dense", kl)
            rows.append(row)

        for T in self.timing_lengths:
            b_ = needle.build(lm, T, 50.0, sample_seed(ctx.seed, "kv-timing", T))
            b_["ids"] = self.with_image(lm, b_["ids"])
            row = {"id": f"timing-{T}", "prompt_tokens": len(b_["ids"])}
            for b in budgets:
                s = self.call(lm, unit, b, lambda: lm.generate([b_["ids"]], self.timing_new_tokens))
                if s["policy"] and s["decode_steps"]:
                    prefill, ms = s["prefill_s"], 1000 * s["decode_s"] / s["decode_steps"]
                    row[f"bookkeeping_share@{T}@{names[b]}"] = s["policy_s"] / s["decode_s"]
                else:  # no policy: prefill from a one-token call, decode from the difference
                    one = self.call(lm, unit, b, lambda: lm.generate([b_["ids"]], 1))
                    prefill = one["wall_s"]
                    ms = 1000 * max(0.0, s["wall_s"] - one["wall_s"]) / max(1, len(s["out"][0]) - 1)
                row[f"prefill_s@{T}@{names[b]}"], row[f"decode_ms_per_token@{T}@{names[b]}"] = prefill, ms
                row[f"peak_mem_bytes@{T}@{names[b]}"] = s.get("peak", 0)
            rows.append(row)
        return self.summarise(rows, budgets, names, per)

    def summarise(self, rows, budgets, names, per) -> TaskResult:
        metrics: dict[str, Metric] = {}
        units = {
            "needle_accuracy": ("higher", "fraction"),
            "needle_accuracy_query_aware": ("higher", "fraction"),
            "ppl_ratio": ("lower", "ratio"),
            "kl_vs_dense": ("lower", "nats/token"),
            "nll": ("lower", "nats/token"),
            "kept_fraction": ("lower", "fraction"),
            "kv_bytes": ("lower", "bytes"),
            "kv_bytes_per_token": ("lower", "bytes"),
            "kv_bytes_fraction": ("lower", "fraction"),
        }
        sample_fields = {
            "needle_accuracy",
            "needle_accuracy_query_aware",
            "ppl_ratio",
            "kl_vs_dense",
            "nll",
            "kept_fraction",
        }
        compressed = [names[b] for b in budgets if b != DENSE]
        for name, (direction, unit) in units.items():
            for b in budgets:
                vals = per[names[b]].get(name)
                if vals:
                    key = f"{name}@{names[b]}"
                    metrics[key] = Metric.mean(vals, direction, unit, key if name in sample_fields else None)
            means = [metrics[f"{name}@{n}"].value for n in compressed if f"{name}@{n}" in metrics]
            if means:
                metrics[name] = Metric(sum(means) / len(means), direction, unit, n=len(means))
        if "needle_accuracy" not in metrics:  # no policy ran: the dense row is all there is
            metrics["needle_accuracy"] = metrics["needle_accuracy@dense"]
        timing = [r for r in rows if r["id"].startswith("timing-")]
        for r in timing:
            for key, value in r.items():
                kind = key.split("@")[0]
                if kind in ("prefill_s", "decode_ms_per_token", "peak_mem_bytes", "bookkeeping_share"):
                    unit = {"prefill_s": "s", "decode_ms_per_token": "ms", "peak_mem_bytes": "bytes"}.get(
                        kind, "fraction"
                    )
                    metrics[key] = Metric(value, "lower", unit, n=1)
        for T in self.timing_lengths:
            dense = metrics.get(f"decode_ms_per_token@{T}@dense")
            for n in compressed:
                m = metrics.get(f"decode_ms_per_token@{T}@{n}")
                if dense and m and dense.value > 0:
                    metrics[f"decode_time_ratio@{T}@{n}"] = Metric(m.value / dense.value, "lower", "ratio", n=1)
        pareto = []
        for b in budgets:
            n = names[b]
            entry = {"budget": n}
            for name in (
                "kept_fraction",
                "kv_bytes_fraction",
                "needle_accuracy",
                "needle_accuracy_query_aware",
                "ppl_ratio",
                "kl_vs_dense",
            ):
                m = metrics.get(f"{name}@{n}")
                entry[name] = m.value if m else (1.0 if b == DENSE and name.startswith(("kept", "kv_")) else None)
            pareto.append(entry)
        fractions = {
            n: metrics[f"kv_bytes_fraction@{n}"].value for n in compressed if f"kv_bytes_fraction@{n}" in metrics
        }
        row = equal_memory_row(fractions, self.rank_bytes)
        if row:  # first, so that it is the record's first metric too
            metrics = {
                "needle_accuracy_at_memory": dataclasses.replace(metrics[f"needle_accuracy@{row[0]}"]),
                **metrics,
            }
        details = {
            "pareto": pareto,
            "budgets": [names[b] for b in budgets],
            "ranked_row": {"budget": row[0], "kv_bytes_fraction": row[1]} if row else None,
        }
        data_hash = hashlib.sha256("".join(r.get("input_hash", r["id"]) for r in rows).encode()).hexdigest()
        return TaskResult(metrics, rows, details, data_hash)
