"""math_prm_bon's report and curves (issue 23): one table per pool (world version and source of the
solutions), one curve per configuration, its seeds pooled as
mean ± sample sd per N (harness/seeds.py); different configurations never share a curve. The
oracle pass@N and majority@N rows depend only on the pools, so they are taken once per seed from
the records on the widest N grid and averaged over the seeds the same way."""

from __future__ import annotations

import dataclasses

from harness import params, registry, seeds
from harness.errors import UserError


def report_label(rec: dict) -> str:
    """A record's method and the parameters it was given that differ from the method's defaults
    (agg and estimation always)."""
    name = rec["method"]["name"]
    p = rec["method"]["params"].get(name, {})
    try:
        method = registry.method(name)(**({"model": "x"} if "model" in p else {}))
        defaults, known = params.to_dict(method), {f.name for f in dataclasses.fields(method)}
    except (UserError, TypeError, ValueError):  # a method this install lacks, or one that needs arguments
        defaults, known = {}, set()
    # a parameter left out of records at its default (omit_at_default, e.g. backbone) is in a record
    # only when it was set: it is shown then
    bits = [
        f"{k}={v}"
        for k, v in p.items()
        if k in ("agg", "estimation") or (k in known and (k not in defaults or defaults[k] != v))
    ]
    bits.sort(key=lambda b: b.startswith("agg="))
    return name + (f" ({', '.join(bits)})" if bits else "")


def curves(recs: list[dict]) -> tuple[list[int], list[dict], list[tuple[str, seeds.SeedGroup]]]:
    """(the widest N grid, one record per seed on it for the oracle and majority rows, the
    configurations with their labels, sorted)."""
    grid = max((r["details"]["grid"] for r in recs), key=len)
    first = next(r for r in recs if r["details"]["grid"] == grid)
    base: dict = {}
    for r in recs:  # the same data (task params and model) as the first record on the widest grid
        if r["details"]["grid"] == grid and (r["task"], r["model"].get("id")) == (
            first["task"],
            first["model"].get("id"),
        ):
            base.setdefault(r.get("seed"), r)
    groups = sorted(((report_label(g.records[0]), g) for g in seeds.group(recs)), key=lambda x: x[0])
    return grid, list(base.values()), groups


def curve(records: list[dict], metric: str, grid: list[int]) -> list[seeds.Spread | None]:
    """metric@N over the records' seeds, for each N of the grid (None where no record has it)."""
    return [seeds.spread(r["metrics"].get(f"{metric}@{n}", {}).get("value") for r in records) for n in grid]


def _interval(records: list[dict], metric: str) -> str:
    ivs = [iv for r in records if (iv := r["details"]["intervals"].get(f"{metric}@{r['details']['grid'][-1]}"))]
    if not ivs:
        return "—"
    lo, hi = (sum(iv[i] for iv in ivs) / len(ivs) for i in (0, 1))
    return f"{lo:.3f}–{hi:.3f}" + (f" (mean of {len(ivs)} seeds' CIs)" if len(ivs) > 1 else "")


def pool_key(rec: dict) -> tuple[int, str, str]:
    """What a record ranks its verifiers on: the world version (1 where the record predates the
    parameter), where the solutions came from (the world's stochastic policy, sampled from the
    record's model, or files) and, for the world's problems, the pool's size (a GenRM-CoT cell runs
    on 50 problems x 16 samples: other problems, other majority and pass@N). Records of different
    pools never share a table or a curve."""
    p = rec["task"]["params"]
    source = p.get("solutions", "synthetic")
    if source == "generate" and p.get("problems", "synthetic") != "synthetic":
        return 0, "generate from files", ""  # a problems file (e.g. MATH-500): the world version plays no part
    if source not in ("synthetic", "generate"):
        return int(p.get("world_version", 1)), "files", ""
    problems = min(p.get("world_problems", 200), rec.get("limit") or float("inf"))
    samples = p.get("world_samples", 64) if source == "synthetic" else p.get("samples")
    return int(p.get("world_version", 1)), source, f"{problems} problems x {samples} samples"


def pool_title(key: tuple[int, str, str]) -> str:
    version, source, size = key
    title = {
        "synthetic": f"synthetic math world v{version}, pools of the world's stochastic policy",
        "generate": f"synthetic math world v{version} problems, pools sampled from the model",
        "generate from files": "problems from a file, pools sampled from the model",
        "files": "problems and solutions from files",
    }[source]
    return f"{title} ({size})" if size else title


def pools(recs: list[dict]) -> list[tuple[tuple[int, str, str], list[dict]]]:
    out: dict[tuple[int, str, str], list[dict]] = {}
    for r in recs:
        out.setdefault(pool_key(r), []).append(r)
    return sorted(out.items())


def tables(recs: list[dict]) -> str:
    split = pools(recs)
    if len(split) == 1:
        return pool_table(recs)
    return "\n\n".join(f"**{pool_title(key)}** ({len(rs)} records)\n\n{pool_table(rs)}" for key, rs in split)


def pool_table(recs: list[dict]) -> str:
    grid, base, groups = curves(recs)
    envs = seeds.Environments(recs)
    head = ["method", *(f"N={n}" for n in grid), "95% CI at its largest N", "weighted majority at its largest N"]
    body = []
    for name, metric, rs in [("oracle pass@N", "pass", base), ("majority@N", "majority", base)] + [
        (label + envs.mark(g.records), "accuracy", g.records) for label, g in groups
    ]:
        cells = [s.text("{:.3f}".format) if s else "—" for s in curve(rs, metric, grid)]
        wm = (
            seeds.spread(r["metrics"].get(f"weighted_majority@{r['details']['grid'][-1]}", {}).get("value") for r in rs)
            if metric == "accuracy"
            else None
        )
        body.append([name, *cells, _interval(rs, metric), wm.text("{:.3f}".format) if wm else "—"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    note = seeds.seeds_line([len(g.seeds) for _, g in groups], [r.get("seed") for r in recs])
    return "\n".join(lines + seeds.notes(note, envs.legend()))
