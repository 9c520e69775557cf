"""spec_acceptance's report (issue 23): τ as Spec-Bench reports it, one table per temperature.

τ of a configuration at a temperature is pooled over its prompts and seeds: all new tokens over all
target forwards (Spec-Bench's #mean accepted tokens), never the mean of per-prompt ratios, where a
few degenerate prompts (τ = γ + 1) can lift a method over a better one. Each temperature is ranked
on its own, n (prompts × seeds) is stated, and the spread of the per-seed pooled τ is shown next
to it. A second table holds the losslessness checks, seeds averaged."""

from __future__ import annotations

from harness import records, report, seeds


def pooled_tau(recs: list[dict], key: str) -> tuple[float, int] | None:
    """(pooled τ, prompts × seeds) of one configuration's records at temperature `key`, from each
    record's per-temperature totals (new tokens, target forwards, prompts). A single record written
    before the totals existed still has its own pooled τ and prompt count."""
    infos = [r["details"].get("per_temperature", {}).get(key) for r in recs]
    if not infos or any(i is None for i in infos):
        return None
    if all("target_forwards" in i for i in infos):
        forwards = sum(i["target_forwards"] for i in infos)
        return sum(i["new_tokens"] for i in infos) / max(forwards, 1), sum(i["prompts"] for i in infos)
    if len(recs) == 1 and "tau_pooled" in infos[0]:
        return infos[0]["tau_pooled"], recs[0]["metrics"][f"tau@T{key}"]["n"]
    return None  # older records of several seeds: their totals cannot be recovered


def _n(recs: list[dict], key: str, total: int) -> str:
    prompts = {r["details"]["per_temperature"][key].get("prompts") for r in recs}
    if len(recs) > 1 and len(prompts) == 1 and None not in prompts:
        return f"{total} ({prompts.pop()} × {len(recs)})"
    return str(total)


def _acceptance(recs: list[dict], key: str) -> str:
    """α̂ pooled over the seeds: accepted ÷ verified draft tokens (each record's rate × its n)."""
    ms = [m for r in recs if (m := r["metrics"].get(f"acceptance_rate@T{key}"))]
    verified = sum(m["n"] for m in ms)
    return f"{sum(m['value'] * m['n'] for m in ms) / verified:.2f}" if verified else "—"


def _over_seeds(values, f: str = "{:.2f}") -> str:
    s = seeds.spread(values)
    return s.text(f.format) if s else "—"


def _temperature_table(key: str, groups: list[tuple[str, seeds.SeedGroup]], envs: seeds.Environments) -> list[str]:
    rows = []
    for label, g in groups:
        tau = pooled_tau(g.records, key)
        if tau is None:
            continue
        per_seed = [pooled_tau([r], key) for r in g.records]
        sd = seeds.spread(t for t, _ in filter(None, per_seed)) if len(g.records) > 1 else None
        per = [r["details"]["per_temperature"][key] for r in g.records]
        steps = (
            f"{_over_seeds(p['tau_per_step'] for p in per)} / {_over_seeds(p['tau_analytic'] for p in per)}"
            if all("tau_per_step" in p for p in per)
            else "—"
        )
        speedup = _over_seeds(r["metrics"].get(f"speedup@T{key}", {}).get("value") for r in g.records)
        cells = [
            f"{tau[0]:.2f}",
            _n(g.records, key, tau[1]),
            f"{sd.sd:.2f}" if sd and sd.sd is not None else "—",
            _acceptance(g.records, key),
            steps,
            speedup,
        ]
        unranked = lossy(g.records)
        rows.append((unranked, -tau[0], label, f"`{label}`{envs.mark(g.records)}" + " (lossy)" * unranked, cells))
    rows.sort(key=lambda x: x[:3])  # lossy rows last, so the others' positions are their ranks
    head = ["rank", "method", "τ pooled", "n (prompts × seeds)", "sd of τ over seeds", "α̂ pooled"]
    head += ["tokens per step: measured / analytic (chain)", "speedup"]
    body = [["—" if row[0] else str(i), row[3], *row[4]] for i, row in enumerate(rows, start=1)]
    out = [
        f"**T = {key}**: τ = new tokens ÷ target forwards, pooled over prompts and seeds (Spec-Bench); ranked",
        "",
        report._md(head, body),
    ]
    if any(row[0] for row in rows):
        out += [
            "",
            "(lossy): its greedy output differs from the target's (`lossless_greedy` < 1), so its τ counts "
            "tokens the target never verified; listed last, not ranked against the lossless decoders.",
        ]
    return out


# the leaderboard's schema states the same rule for τ (`unranked_below`; a test holds them equal)
LOSSY = ("lossless_greedy", 1.0)


def lossy(recs: list[dict]) -> bool:
    """A configuration whose greedy output differed from the target's on some prompt (Co-LLM's
    deferral by design; a lossless method that breaks its promise fails its cell instead)."""
    return records.any_below(recs, *LOSSY)


def _checks_table(groups: list[tuple[str, seeds.SeedGroup]], envs: seeds.Environments) -> list[str]:
    body = []
    for label, g in groups:
        ms = [r["metrics"] for r in g.records]
        tests = [r["details"]["sampling_test"] for r in g.records if "p_value" in r["details"].get("sampling_test", {})]
        passed = [m["lossless_sampling"]["value"] for m in ms if "lossless_sampling" in m]
        if not passed:
            sampling = "—"
        elif len(passed) == 1:
            sampling = f"{passed[0]:g}" + (f" (p = {tests[0]['p_value']:.2f})" if tests else "")
        else:
            low = f" (min p = {min(t['p_value'] for t in tests):.2f})" if tests else ""
            sampling = f"{sum(passed):g}/{len(passed)} seeds pass{low}"
        body.append(
            [
                f"`{label}`{envs.mark(g.records)}",
                _over_seeds(m.get("lossless_greedy", {}).get("value") for m in ms),
                _over_seeds(m.get("greedy_agreement", {}).get("value") for m in ms),
                sampling,
                _over_seeds((m.get("deferral_rate", {}).get("value") for m in ms), "{:.3f}"),
                str(len(g.seeds)),
            ]
        )
    head = ["method", "lossless_greedy", "greedy_agreement", "lossless_sampling (G-test)", "deferral_rate", "seeds"]
    return ["**Losslessness** (each check over the seeds)", "", report._md(head, body)]


def tables(recs: list[dict]) -> str:
    label = dict(zip(map(id, recs), report.variant_labels(recs)))
    groups = sorted(((label[id(g.records[0])], g) for g in seeds.group(recs)), key=lambda x: x[0])
    envs = seeds.Environments(recs)
    keys = [f"{t:g}" for t in sorted({t for r in recs for t in r["task"]["params"]["temperatures"]})]
    out: list[str] = []
    for key in keys:
        out += [*_temperature_table(key, groups, envs), ""]
    out += _checks_table(groups, envs)
    note = seeds.seeds_line([len(g.seeds) for _, g in groups], [r.get("seed") for r in recs])
    return "\n".join(out + seeds.notes(note, envs.legend()))
