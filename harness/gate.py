"""Regression gate: compare the records of a current run with baseline records, cell by cell.

A metric regresses when it moves the wrong way (by its direction) by more than its tolerance
*and*, where both records carry per-sample values for it, a paired test on the shared samples
says the change is not noise (exact McNemar for 0/1 values, paired bootstrap otherwise). Exit
codes: 0 all hold, 1 a regression, 2 bad input (a malformed record or rules file)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import records
from harness.errors import UserError

DEFAULT_RULES = {"default": {"abs": 0.0, "rel": 0.0}, "metrics": {}, "alpha": 0.05}


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


def load_rules(path: str | None) -> dict:
    if not path:
        return DEFAULT_RULES
    try:
        rules = json.loads(Path(path).read_text()) if path.endswith(".json") else _yaml(path)
    except (OSError, ValueError) as e:
        raise UserError(f"gate rules {path}: {e}") from None
    if not isinstance(rules, dict):
        raise UserError(f"gate rules {path}: expected a mapping")
    return {**DEFAULT_RULES, **rules}


def _yaml(path: str):
    import yaml
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(str(e).splitlines()[0]) from None


def collect(folder: str) -> dict[str, tuple[Path, dict]]:
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"gate: {folder} is not a folder")
    found = {}
    for p in _record_files(root):
        try:
            rec = records.read_untrusted(p)
        except records.BadRecord as e:
            raise UserError(f"gate: {p}: {e}") from None
        found[rec["run_id"]] = (p, rec)
    return found


def _record_files(root: Path) -> list[Path]:
    """*.json under root, never through a symlinked folder (refused: it may point anywhere)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                raise UserError(f"gate: {os.path.join(dirpath, d)}: symlink: not followed")
            if d == ".sweep":                             # harness sweep's own job logs
                dirnames.remove(d)
        found += [Path(dirpath) / f for f in filenames if f.endswith(".json")]
    return sorted(found)


def mcnemar_p(a: list[float], b: list[float]) -> float:
    """Exact two-sided McNemar test on paired 0/1 outcomes."""
    n01 = sum(1 for x, y in zip(a, b) if x == 1 and y == 0)
    n10 = sum(1 for x, y in zip(a, b) if x == 0 and y == 1)
    n = n01 + n10
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(n01, n10) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def bootstrap_p(a: list[float], b: list[float], resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value for mean(b − a) ≠ 0."""
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


def _paired(base_path: Path, cur_path: Path, field_name: str):
    try:
        a = {s["id"]: s.get(field_name) for s in records.read_samples(base_path)}
        b = {s["id"]: s.get(field_name) for s in records.read_samples(cur_path)}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ids = [i for i in a if i in b and isinstance(a[i], (int, float)) and isinstance(b[i], (int, float))]
    return (ids, [a[i] for i in ids], [b[i] for i in ids]) if ids else None


def compare(baseline: str, current: str, rules: dict) -> tuple[list[Finding], dict]:
    base, cur = collect(baseline), collect(current)
    findings = []
    for rid in sorted(set(base) & set(cur)):
        (bp, brec), (cp, crec) = base[rid], cur[rid]
        for name, bm in brec["metrics"].items():
            cm = crec["metrics"].get(name)
            if cm is None or not isinstance(bm.get("value"), (int, float)) or not isinstance(cm.get("value"), (int, float)):
                continue
            tol_rule = {**rules["default"], **rules["metrics"].get(name, {})}
            bv, cv = float(bm["value"]), float(cm["value"])
            tolerance = max(float(tol_rule.get("abs", 0)), float(tol_rule.get("rel", 0)) * abs(bv))
            worse = (bv - cv) if bm.get("direction") == "higher" else (cv - bv)
            p, changed = None, []
            pairs = _paired(bp, cp, bm["sample_field"]) if bm.get("sample_field") else None
            if pairs:
                ids, a, b = pairs
                p = paired_test(a, b)[1]
                changed = [(i, x, y) for i, x, y in zip(ids, a, b) if x != y]
            regressed = worse > tolerance + 1e-12 and (p is None or p < rules["alpha"])
            findings.append(Finding(str(cp), crec["task"]["name"], crec["method"]["name"], name, bv, cv,
                                    tolerance, p, regressed, changed))
    summary = {"matched": len(set(base) & set(cur)), "only_baseline": len(set(base) - set(cur)),
               "only_current": len(set(cur) - set(base))}
    return findings, summary
