"""Regression gate: compare the records of a current run with baseline records, cell by cell.

A metric regresses when it moves the wrong way (by its direction) by more than its tolerance
*and*, where both records carry per-sample values for it, a paired test on the shared samples
says the change is not noise (exact McNemar for 0/1 values, paired bootstrap otherwise).
Deterministic metrics (no per-sample values: perplexity, byte counts, ...) compare at the
tolerance alone. The tolerance is max(abs, rel * |baseline|) from the rules, and never below
floating-point noise: NOISE_REL * |baseline| (default and floor rel 1e-6; the same cell
evaluated on two processors differs by ~1e-8 relative through float32 reduction order), so a
rules file may widen it but not narrow it below noise.

Exit codes: 0 all hold, 1 a regression, 2 bad input: a malformed record or rules file, a metric
that is NaN, infinite or not a number, per-sample values that cannot be read, or a comparison of
nothing (an empty or missing current folder, no cell shared with the baseline) -- a gate that
compared nothing did not pass."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import records, resultsdir
from harness.errors import UserError

NOISE_REL = 1e-6  # relative floor of every tolerance: floating-point noise
NOISE_ABS = 1e-12  # absolute floor, for baselines at or near zero
DEFAULT_RULES = {"default": {"abs": 0.0, "rel": NOISE_REL}, "metrics": {}, "alpha": 0.05}

RULE_TOLERANCE = "tolerance only (deterministic)"  # the metric has no per-sample values


@dataclass
class Finding:
    path: str
    task: str
    method: str
    metric: str
    baseline: float
    current: float
    tolerance: float
    p_value: float | None
    regressed: bool
    changed: list = field(default_factory=list)
    rule: str = RULE_TOLERANCE  # which test decided: the tolerance alone, or tolerance + paired test
    test: str | None = None  # the paired test's name (how its p-value reads: gate.p_text)


def load_rules(path: str | None) -> dict:
    if not path:
        return DEFAULT_RULES
    try:
        rules = json.loads(Path(path).read_text()) if path.endswith(".json") else _yaml(path)
    except (OSError, ValueError) as e:
        raise UserError(f"gate rules {path}: {e}") from None
    if not isinstance(rules, dict):
        raise UserError(f"gate rules {path}: expected a mapping")
    unknown = set(rules) - set(DEFAULT_RULES)
    if unknown:
        raise UserError(f"gate rules {path}: unknown key(s) {sorted(unknown)} (expected default, metrics, alpha)")
    metrics = rules.get("metrics", {})
    if not isinstance(metrics, dict):
        raise UserError(f"gate rules {path}: metrics must map a metric name to {{abs, rel}}")
    out = {
        "default": _tol_rule(path, "default", rules.get("default", {}), DEFAULT_RULES["default"]),
        "metrics": {str(k): _tol_rule(path, f"metrics.{k}", v, {}) for k, v in metrics.items()},
        "alpha": rules.get("alpha", DEFAULT_RULES["alpha"]),
    }
    a = out["alpha"]
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1:
        raise UserError(f"gate rules {path}: alpha must be a number in (0, 1], got {_short(a)}")
    return out


def _tol_rule(path: str, where: str, rule, base: dict) -> dict:
    if not isinstance(rule, dict) or set(rule) - {"abs", "rel"}:
        raise UserError(f"gate rules {path}: {where} must be a mapping with keys abs and/or rel, got {_short(rule)}")
    for k, v in rule.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UserError(f"gate rules {path}: {where}.{k} must be a finite number >= 0, got {_short(v)}")
    return {**base, **rule}


def _yaml(path: str):
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(str(e).splitlines()[0]) from None


def collect(folder: str, role: str = "") -> dict[str, tuple[Path, dict]]:
    """{run id: (path, record)} of a folder, or UserError naming every unreadable file in it (a
    set that is partly unreadable, or holds one cell twice, cannot be compared: a duplicate could
    mask a regression) and exit 2."""
    root = Path(folder)
    label = f"--{role} {folder}" if role else str(folder)
    if not root.is_dir():
        raise UserError(f"gate: {label} is not a folder")
    scan = resultsdir.scan(root, _metrics_problem)
    bad = scan.unreadable()
    if bad:
        shown = "; ".join(f"{root / rel}: {why}" for rel, why in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise UserError(f"gate: {label} has {len(bad)} unreadable file(s), nothing compared: {shown}{more}")
    if not scan.found:
        raise UserError(
            f"gate: {label} holds no records: nothing to compare (a gate that compared nothing did not pass)"
        )
    return {rec["run_id"]: (Path(path), rec) for path, _, rec in scan.found}


def _metrics_problem(rec: dict) -> str | None:
    """Every metric is a mapping whose value is a finite number: NaN compares false with everything
    and would pass any tolerance, so it is bad input rather than a silent pass."""
    if not isinstance(rec["run_id"], str):
        return "malformed record: run_id is not a string"
    for key in ("task", "method"):
        if not isinstance(rec[key], dict) or not isinstance(rec[key].get("name"), str):
            return f"malformed record: field {key!r} has no name"
    metrics = rec.get("metrics")
    if not isinstance(metrics, dict):
        return "malformed record: metrics is not a mapping"
    for name, m in metrics.items():
        v = m.get("value") if isinstance(m, dict) else None
        if not isinstance(m, dict) or isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"metric {name!r} has no numeric value ({_short(m)})"
        if not math.isfinite(v):
            return f"metric {name!r} is {v} (not a finite number)"
    return None


def _short(x) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def tolerance(rule: dict, baseline: float) -> float:
    """max(abs, rel * |baseline|) of the rule, never below floating-point noise."""
    return max(
        float(rule.get("abs", 0)), float(rule.get("rel", 0)) * abs(baseline), NOISE_REL * abs(baseline), NOISE_ABS
    )


def mcnemar_p(a: list[float], b: list[float]) -> float:
    """Exact two-sided McNemar test on paired 0/1 outcomes."""
    n01 = sum(1 for x, y in zip(a, b) if x == 1 and y == 0)
    n10 = sum(1 for x, y in zip(a, b) if x == 0 and y == 1)
    n = n01 + n10
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(n01, n10) + 1)) / 2**n
    return min(1.0, 2 * tail)


BOOTSTRAP_RESAMPLES = 10000  # B of the paired bootstrap: its p-value is a multiple of 1/B


def bootstrap_p(a: list[float], b: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value for mean(b − a) ≠ 0 (0.0 when no resample crosses zero:
    then all it says is p < 1/B; p_text writes it so)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if not d.any():
        return 1.0
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))


def paired_test(a: list[float], b: list[float]) -> tuple[str, float]:
    """(test name, two-sided p) for paired per-sample values: exact McNemar when every value is
    0/1, a paired bootstrap of the mean difference otherwise."""
    if set(a) | set(b) <= {0, 1}:
        return "McNemar (exact)", mcnemar_p(a, b)
    return "paired bootstrap", bootstrap_p(a, b)


def p_text(test: str | None, p: float | None, short: bool = False) -> str:
    """A p-value as an honest statement: the bootstrap's p is estimated from B resamples, so a 0
    means only p < 1/B ("p < 0.0001 (1/B, B = 10,000 resamples)"), never "p = 0"; McNemar's
    exact p is printed as it is (below the smallest double it reads p < 1e-300)."""
    if p is None:
        return ""
    if test == "paired bootstrap":
        b = BOOTSTRAP_RESAMPLES
        if p <= 0:
            return f"p < {1 / b:g}" + ("" if short else f" (1/B, B = {b:,} resamples)")
        return f"p = {p:.4g}" + ("" if short else f" (B = {b:,} resamples)")
    return "p < 1e-300" if p <= 0 else f"p = {p:.4g}"


def _samples(path: Path, rec: dict, field_name: str) -> dict:
    try:
        return {s["id"]: s.get(field_name) for s in records.read_samples(path, rec)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"gate: {records.samples_path(path, rec)}: per-sample values unreadable "
            f"({e.__class__.__name__}: {_short(str(e))}); the paired test needs them"
        ) from None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _paired(base: tuple[Path, dict], cur: tuple[Path, dict], field_name: str):
    a, b = _samples(*base, field_name), _samples(*cur, field_name)
    ids = [i for i in a if i in b and _number(a[i]) and _number(b[i])]
    return (ids, [a[i] for i in ids], [b[i] for i in ids]) if ids else None


def compare(baseline: str, current: str, rules: dict) -> tuple[list[Finding], dict]:
    base, cur = collect(baseline, "baseline"), collect(current, "current")
    shared = sorted(set(base) & set(cur))
    if not shared:
        raise UserError(
            f"gate: no cell of --current {current} is in --baseline {baseline} "
            f"({len(cur)} current, {len(base)} baseline records): nothing compared"
        )
    findings = []
    for rid in shared:
        (_, brec), (cp, crec) = base[rid], cur[rid]
        for name, bm in brec["metrics"].items():
            cm = crec["metrics"].get(name)
            if cm is None:
                continue
            tol = tolerance({**rules["default"], **rules["metrics"].get(name, {})}, float(bm["value"]))
            bv, cv = float(bm["value"]), float(cm["value"])
            worse = (bv - cv) if bm.get("direction") == "higher" else (cv - bv)
            p, changed, rule, test = None, [], RULE_TOLERANCE, None
            if bm.get("sample_field"):
                pairs = _paired(base[rid], cur[rid], bm["sample_field"])
                if pairs:
                    ids, a, b = pairs
                    test, p = paired_test(a, b)
                    rule = f"tolerance + {test} p < {rules['alpha']:g}"
                    changed = [(i, x, y) for i, x, y in zip(ids, a, b) if x != y]
                else:
                    rule = "tolerance only (no shared samples)"
            regressed = worse > tol and (p is None or p < rules["alpha"])
            findings.append(
                Finding(
                    str(cp),
                    crec["task"]["name"],
                    crec["method"]["name"],
                    name,
                    bv,
                    cv,
                    tol,
                    p,
                    regressed,
                    changed,
                    rule,
                    test,
                )
            )
    if not findings:
        raise UserError(f"gate: {len(shared)} shared cells but no metric in common: nothing compared")
    summary = {
        "matched": len(shared),
        "only_baseline": len(set(base) - set(cur)),
        "only_current": len(set(cur) - set(base)),
    }
    return findings, summary


def print_report(findings, summary, rules) -> int:
    """The gate's table and verdict on stdout; the exit code (1: a regression)."""
    from harness.tables import fmt, format_table

    bad = [f for f in findings if f.regressed]
    moved = [f for f in findings if f.current != f.baseline or f.regressed]
    d = rules["default"]
    print(
        f"gate: {summary['matched']} matching cells, {len(findings)} metrics compared; "
        f"{summary['only_baseline']} cells only in the baseline, {summary['only_current']} only in current"
    )
    print(
        f"gate: a regression moves the wrong way by more than the tolerance max(abs {d['abs']:g}, "
        f"rel {d['rel']:g} x |baseline|), never below rel {NOISE_REL:g} (floating-point noise), and "
        f"where the metric has per-sample values is significant in a paired test (p < {rules['alpha']:g})"
    )
    if moved:
        rows = [
            [
                f.task,
                f.method,
                f.metric,
                fmt(f.baseline),
                fmt(f.current),
                fmt(_rel(f)),
                fmt(f.tolerance),
                f.rule,
                p_text(f.test, f.p_value, short=True).removeprefix("p = ") if f.p_value is not None else "",
                "REGRESSION" if f.regressed else "holds",
            ]
            for f in moved
        ]
        print(
            format_table(
                ["task", "method", "metric", "baseline", "current", "rel. change", "tolerance", "rule", "p", "verdict"],
                rows,
            )
        )
    print(
        f"gate: {len(findings) - len(moved)} metrics identical to the baseline, {len(moved) - len(bad)} changed "
        f"within the rule"
    )
    if bad:
        for f in bad:
            print(f"  regression in {f.path}: {f.metric} {f.baseline!r} -> {f.current!r}")
            for sid, x, y in f.changed[:10]:
                print(f"  {f.task}/{f.method} sample {sid}: {x} -> {y}")
        print(f"gate: {len(bad)} regression(s)")
        return 1
    print("gate: all metrics hold")
    return 0


def _rel(f) -> float:
    return (f.current - f.baseline) / abs(f.baseline) if f.baseline else f.current - f.baseline
