"""Speculative-decoding acceptance, speed and losslessness, measured as Spec-Bench does (τ with the
bonus token, speedup of tokens/s over the autoregressive baseline timed in the same run, prefill
included, warm-ups and repeats, a fixed thread count) plus exact losslessness checks."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import torch

from harness import data, registry
from harness.errors import NoEffect, UserError
from harness.interfaces import MethodContext, Metric, Task, TaskResult
from harness.provenance import device_clock
from harness.registry import register
from harness.synthetic import Corpus, sample_seed
from harness.tasks import _spec_report
from harness.tasks._spec_lossless import distribution_test


class NotLossless(NoEffect):
    """A speculative method changed the target's output: the cell fails and writes no record."""


def read_prompts(path: str) -> list[tuple[str, str]]:
    """(id, prompt) from a local file: JSONL with "prompt" or Spec-Bench's "turns" (first turn)
    per line, or plain text with one prompt per non-empty line. Errors name the file and line."""
    text = data.read_text(path, "spec_acceptance prompts")
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"spec_acceptance prompts: {path} line {i} is not valid JSON ({e})") from None
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if prompt is None and isinstance(row, dict) and isinstance(row.get("turns"), list) and row["turns"]:
                prompt = row["turns"][0]
            if not isinstance(prompt, str) or not prompt.strip():
                raise UserError(
                    f'spec_acceptance prompts: {path} line {i} has no non-empty "prompt" '
                    f'string (or Spec-Bench "turns" list)'
                )
            out.append((str(row.get("question_id", row.get("id", i))), prompt))
        else:
            out.append((str(i), line))
    return out


@register
@dataclass
class SpecAcceptance(Task):
    """Speculative decoding on prompts from the synthetic corpus (held-out seeds) or a local file,
    at temperature 0 and/or 1.

    Metrics, per temperature T (never averaged across temperatures, as Spec-Bench reports them):
    `tau@T` (new tokens per target forward, the prefill's token and each step's bonus token
    included, so autoregressive decoding = 1, as Spec-Bench's #mean accepted tokens), pooled over
    prompts: Σ new tokens / Σ target forwards, so a short degenerate output cannot outweigh the
    rest (n = prompts; the totals are in `details.per_temperature` so seeds pool exactly). The main
    metric is `tau@T0`, the greedy setting every paper reports; a run without T = 0 is unranked. For chain
    drafts `acceptance_rate` (α̂ = accepted / verified draft tokens) with per-position n-α (EAGLE's
    alpha.py) in details; draft and target forward counts; `speedup` = mean tokens/s of the method /
    mean tokens/s of the `autoregressive` method timed in the same run (Spec-Bench: `warmups` full
    passes over the first prompt, `repeats` runs, prefill included, torch at `threads` threads);
    `lossless_greedy` (the temperature-0 output equals autoregressive greedy, token for token, on
    every prompt) and `lossless_sampling` (at the first positive temperature, G-tests of next-token histograms over
    `sampling_seeds` seeds at `sampling_prefixes` fixed prompts against the target's exact
    distribution do not reject at level `alpha`). For a method of the speculative family, which
    promises the target's output, a violation fails the cell (no record); a decoding method that
    makes no such promise (`lossless = False`: Co-LLM's learned deferral) gets the same checks as
    measurements, next to `greedy_agreement` (the share of positions where its temperature-0 output
    equals autoregressive greedy, over the longer of the two) and, when it defers tokens to the
    target (telemetry `deferral_decisions`, `deferred_tokens`), `deferral_rate` (pooled over tokens).
    For chain drafts with a
    fixed γ the analytic τ = (1 − α̂^(γ+1)) / (1 − α̂) is reported next to the measured one.

    The target's forwards are counted by the LM's own forward hook, so τ is measured the same way
    for every method (hf_assisted included), not taken from the method's telemetry.

    Per-sample rows hold the output's token ids (`prediction_ids`) next to its text, and at
    temperature 0 the autoregressive ids (`baseline_ids`): equality between methods is checked on
    ids, since decoded text can hide a difference (special tokens are skipped, tokenizations merge)."""

    name = "spec_acceptance"
    version = "2"  # 2: tau pooled per temperature; no mixed-temperature tau or speedup
    main_metric = "tau@T0"
    summary = "speculative decoding: tau, acceptance, speedup vs autoregressive, losslessness (Spec-Bench protocol)"
    smoke_args = {
        "prompts": "2",
        "max_new_tokens": "8",
        "warmups": "0",
        "repeats": "1",
        "sampling_prefixes": "1",
        "sampling_seeds": "16",
        "sampling_tokens": "2",
    }
    prompts: int = field(default=10, metadata={"help": "synthetic prompts (ignored with prompt_file)"})
    prompt_sentences: int = field(default=4, metadata={"help": "sentences per synthetic prompt"})
    prompt_file: str | None = field(default=None, metadata={"help": "local .jsonl (prompt / turns) or text file"})
    temperatures: tuple[float, ...] = field(default=(0.0, 1.0), metadata={"help": "0 = greedy"})
    max_new_tokens: int = 64
    warmups: int = field(default=3, metadata={"help": "untimed passes over the first prompt (Spec-Bench: 3)"})
    repeats: int = field(default=3, metadata={"help": "timed runs per prompt (Spec-Bench: 3)"})
    threads: int = field(default=1, metadata={"help": "torch threads while timing"})
    sampling_prefixes: int = field(default=3, metadata={"help": "prompts of the distribution test"})
    sampling_seeds: int = field(default=300, metadata={"help": "samples per prefix in the distribution test"})
    sampling_tokens: int = field(default=3, metadata={"help": "tokens generated per sample; 2nd on are tested"})
    alpha: float = field(default=0.001, metadata={"help": "level of the distribution test"})

    def __post_init__(self):
        if min(self.prompts, self.prompt_sentences, self.max_new_tokens, self.repeats, self.threads) < 1:
            raise ValueError("prompts, prompt_sentences, max_new_tokens, repeats and threads must be positive")
        if self.warmups < 0 or self.sampling_prefixes < 0 or self.sampling_seeds < 1:
            raise ValueError("warmups and sampling_prefixes must be >= 0, sampling_seeds positive")
        if self.sampling_tokens < 2:
            raise ValueError("sampling_tokens must be at least 2 (the first token comes from the prefill)")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError("temperatures must be non-negative")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be in (0, 1)")

    @classmethod
    def report(cls, recs: list[dict]) -> str:
        """Per temperature, a ranked table of τ pooled over prompts and seeds (new tokens ÷ target
        forwards, as Spec-Bench) with n = prompts × seeds, the sd of τ over seeds, the chain
        methods' pooled α̂, tokens per step measured / (1 − α̂^(γ+1)) / (1 − α̂), the speedup; then
        the losslessness checks (the G-test's p value), greedy agreement and a learned deferral's
        rate, a row per configuration (tasks/_spec_report.py)."""
        return _spec_report.tables(recs)

    # -- prompts -------------------------------------------------------------------------------
    def load_prompts(self, lm, seed: int, limit: int | None) -> list[tuple[str, list[int]]]:
        if self.prompt_file:
            raw, where = read_prompts(self.prompt_file), f"{self.prompt_file} line "
        else:
            raw = [
                (f"s{i}", Corpus(sample_seed(seed, "spec", i)).text(self.prompt_sentences)) for i in range(self.prompts)
            ]
            where = "synthetic prompt "
        room = getattr(lm.model.config, "max_position_embeddings", None)
        out = []
        for pid, text in raw[:limit]:
            ids = lm.prompt_ids(text)
            if room and len(ids) + self.max_new_tokens > room:
                raise UserError(
                    f"spec_acceptance: {where}{pid} has {len(ids)} tokens; with max_new_tokens "
                    f"{self.max_new_tokens} that exceeds the model's {room} positions"
                )
            out.append((pid, ids))
        return out

    # -- running the method and the baseline -----------------------------------------------------
    @staticmethod
    def _baseline(lm):
        """Context that swaps the method's decoding for the autoregressive baseline (the method's
        model patches stay on) and keeps the baseline's forwards out of the method's telemetry."""
        import contextlib

        @contextlib.contextmanager
        def swap():
            counts, lm.telemetry = lm.telemetry, Counter()
            try:
                with (
                    lm.batch_hooks(generate_batch=None),
                    registry.method("autoregressive")().apply(lm, MethodContext()),
                ):
                    yield
            finally:
                lm.telemetry = counts

        return swap()

    @staticmethod
    def _timed(lm, ids, n, temperature, seed):
        before = Counter(lm.telemetry)
        clock = device_clock(lm.device)  # on a GPU: the device's time, synchronized
        t0 = clock()
        out = lm.generate([ids], n, temperature=temperature, seed=seed)[0]
        wall = clock() - t0
        delta = Counter(lm.telemetry)
        delta.subtract(before)
        return out, wall, delta

    def run(self, ctx) -> TaskResult:
        lm = ctx.lm
        prompts = self.load_prompts(lm, ctx.seed, ctx.limit)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            rows = self._measure(ctx, prompts)
            hot = [t for t in self.temperatures if t > 0]
            sampling = self._distribution_test(ctx, prompts, hot[0]) if hot and self.sampling_prefixes else None
        finally:
            torch.set_num_threads(threads)
        return self._summarise(ctx, rows, sampling, prompts)

    def _measure(self, ctx, prompts) -> list[dict]:
        lm, rows = ctx.lm, []
        eos = lm.tokenizer.eos_token_id
        for t in self.temperatures:
            for _ in range(self.warmups):
                self._timed(lm, prompts[0][1], self.max_new_tokens, t, ctx.seed)
                with self._baseline(lm):
                    self._timed(lm, prompts[0][1], self.max_new_tokens, t, ctx.seed)
            for i, (pid, ids) in enumerate(ctx.iterate(prompts, total=len(prompts), desc=f"spec T={t:g}")):
                runs, base_runs = [], []
                for r in range(self.repeats):  # alternate method and baseline against drift
                    seed = sample_seed(ctx.seed, pid, r) % 2**31
                    runs.append(self._timed(lm, ids, self.max_new_tokens, t, seed))
                    with self._baseline(lm):
                        base_runs.append(self._timed(lm, ids, self.max_new_tokens, t, seed))
                out, _, tel = runs[0]
                # a row cut at EOS produced the EOS too: count it, as the forwards did
                produced = lambda o: len(o) + (len(o) < self.max_new_tokens and eos is not None)
                rate = lambda rs: sum(produced(o) for o, _, _ in rs) / sum(w for _, w, _ in rs)
                row = {
                    "id": f"T{t:g}-{pid}",
                    "temperature": t,
                    "prompt_id": pid,
                    "input_hash": hashlib.sha256(str(ids).encode()).hexdigest()[:16],
                    "prompt_tokens": len(ids),
                    "new_tokens": produced(out),
                    "target_forwards": tel["forward_calls"],
                    "draft_forwards": tel["draft_forwards"],
                    "tau": produced(out) / max(tel["forward_calls"], 1),
                    "tokens_per_s": rate(runs),
                    "baseline_tokens_per_s": rate(base_runs),
                    "telemetry": {k: v for k, v in tel.items() if v},
                    "prediction": lm.decode(out),
                    "prediction_ids": list(out),  # exact: text decoding can merge or drop tokens
                }
                row["speedup"] = row["tokens_per_s"] / row["baseline_tokens_per_s"]
                if t == 0:  # equality on token ids, the autoregressive ids kept for a later re-check
                    row["baseline_ids"] = list(base_runs[0][0])
                    row["lossless"] = int(row["prediction_ids"] == row["baseline_ids"])
                    same = sum(a == b for a, b in zip(out, base_runs[0][0]))
                    row["greedy_agreement"] = same / max(len(out), len(base_runs[0][0]), 1)
                    if not row["lossless"]:
                        row["first_difference"] = next(
                            (k for k, (a, b) in enumerate(zip(out, base_runs[0][0])) if a != b),
                            min(len(out), len(base_runs[0][0])),
                        )
                rows.append(row)
        return rows

    def _distribution_test(self, ctx, prompts, temperature: float = 1.0) -> dict:
        """The G-test of sampled tokens against the target's distribution (tasks/_spec_lossless.py)
        after each of the first `sampling_prefixes` prompts."""
        return distribution_test(
            ctx, prompts[: self.sampling_prefixes], self.sampling_seeds, self.sampling_tokens, self.alpha, temperature
        )

    # -- metrics ---------------------------------------------------------------------------------
    def _summarise(self, ctx, rows, sampling, prompts) -> TaskResult:
        spec = any(m.family == "spec" and getattr(m, "lossless", True) for m in ctx.methods)
        metrics, details = (
            {},
            {
                "threads": self.threads,
                "warmups": self.warmups,
                "repeats": self.repeats,
                "timer": "time.perf_counter (device-synchronized on a GPU), prefill included",
                "per_temperature": {},
            },
        )
        for key, unit in (("target_forwards", "forwards"), ("draft_forwards", "forwards")):
            metrics[key] = Metric.mean([r[key] for r in rows], "lower", unit, key)
        for t in self.temperatures:
            sub = [r for r in rows if r["temperature"] == t]
            tel = sum((Counter(r["telemetry"]) for r in sub), Counter())
            tau = Metric.ratio(
                [r["new_tokens"] for r in sub], [r["target_forwards"] for r in sub], "higher", "tokens/forward"
            )
            info = {
                "tau_pooled": tau.value,
                "new_tokens": sum(r["new_tokens"] for r in sub),
                "target_forwards": sum(r["target_forwards"] for r in sub),
                "prompts": len(sub),
                "speedup": (sum(r["tokens_per_s"] for r in sub) / sum(r["baseline_tokens_per_s"] for r in sub)),
            }
            metrics[f"tau@T{t:g}"] = tau
            metrics[f"speedup@T{t:g}"] = Metric(info["speedup"], "higher", "x", len(sub))
            if tel["draft_tokens"]:  # a chain of draft tokens
                verified = tel["accepted_draft_tokens"] + tel["rejections"]
                a = tel["accepted_draft_tokens"] / verified if verified else 0.0
                metrics[f"acceptance_rate@T{t:g}"] = Metric(a, "higher", "fraction", verified)
                info["acceptance_rate"] = a
                gamma = self._gamma(ctx)
                if gamma:
                    steps = tel["spec_steps"]
                    info["tau_per_step"] = (tel["accepted_draft_tokens"] + steps) / steps
                    info["tau_analytic"] = (1 - a ** (gamma + 1)) / (1 - a) if a < 1 else gamma + 1.0
                    info["gamma"] = gamma
            positions = sorted(int(k.rsplit("_", 1)[1]) for k in tel if k.startswith("tested_at_"))
            info["per_position_acceptance"] = {
                str(i): tel[f"accepted_at_{i}"] / tel[f"tested_at_{i}"] for i in positions if tel[f"tested_at_{i}"]
            }
            if tel["deferral_decisions"]:  # a learned deferral to the target (Co-LLM)
                rate = tel["deferred_tokens"] / tel["deferral_decisions"]
                metrics[f"deferral_rate@T{t:g}"] = Metric(rate, "lower", "fraction", tel["deferral_decisions"])
                info["deferral_rate"] = rate
            details["per_temperature"][f"{t:g}"] = info
        chain = [k for k in metrics if k.startswith("acceptance_rate@")]
        if chain:
            verified = sum(metrics[k].n for k in chain)
            metrics["acceptance_rate"] = Metric(
                sum(metrics[k].value * metrics[k].n for k in chain) / max(verified, 1), "higher", "fraction", verified
            )
        deferral = [k for k in metrics if k.startswith("deferral_rate@")]
        if deferral:
            decisions = sum(metrics[k].n for k in deferral)
            rate = sum(metrics[k].value * metrics[k].n for k in deferral) / decisions
            metrics["deferral_rate"] = Metric(rate, "lower", "fraction", decisions)
        greedy = [r for r in rows if "lossless" in r]
        if greedy:
            metrics["lossless_greedy"] = Metric.mean([r["lossless"] for r in greedy], "higher", "fraction", "lossless")
            metrics["greedy_agreement"] = Metric.mean(
                [r["greedy_agreement"] for r in greedy], "higher", "fraction", "greedy_agreement"
            )
            if spec and not all(r["lossless"] for r in greedy):
                bad = [r["id"] for r in greedy if not r["lossless"]]
                raise NotLossless(f"temperature-0 output differs from autoregressive greedy on {', '.join(bad)}")
        if sampling is not None and not sampling["groups"]:  # too flat or too few samples: nothing to test
            sampling["note"] = (
                "fewer than 20 samples or fewer than two bins of expected count >= 5: not tested (raise sampling_seeds)"
            )
            details["sampling_test"] = sampling
        elif sampling is not None:
            details["sampling_test"] = sampling
            ok = sampling["p_value"] >= self.alpha
            metrics["lossless_sampling"] = Metric(float(ok), "higher", "pass", len(sampling["groups"]))
            if spec and not ok:
                raise NotLossless(
                    f"temperature-1 next-token histograms reject the target's distribution "
                    f"(G={sampling['g']:.1f}, df={sampling['df']}, p={sampling['p_value']:.2g} < {self.alpha})"
                )
        data_hash = hashlib.sha256(
            "".join(hashlib.sha256(str(ids).encode()).hexdigest() for _, ids in prompts).encode()
        ).hexdigest()
        return TaskResult(metrics, rows, details, data_hash)

    @staticmethod
    def _gamma(ctx) -> int | None:
        """γ of a fixed-length chain drafter (LMMethod.draft_length), for the analytic τ."""
        found = [m.draft_length() for m in ctx.methods if m.draft_length() is not None]
        return found[0] if len(found) == 1 else None
