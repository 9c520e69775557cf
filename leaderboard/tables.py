"""The leaderboard's tables, computed from loaded runs (no Streamlit here, so the views are
testable and the benchmark times exactly what the overview computes)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pandas as pd

from harness.gate import paired_test
from harness.leaderboard.loader import Run, _num
from harness.leaderboard.schema import Schema

ZOO_NOTE = (
    "zoo model: a tiny reference model trained by this project on its synthetic corpus — "
    "these numbers are for that model only, not for real LLMs"
)


def filter_runs(runs: list[Run], tasks=(), methods=(), families=(), models=()) -> list[Run]:
    return [
        r
        for r in runs
        if (not tasks or r.task in tasks)
        and (not methods or r.method in methods)
        and (not families or r.family in families)
        and (not models or r.model in models)
    ]


def _sort_key(direction: str):
    return lambda v: (v is None, -v if (v is not None and direction == "higher") else (v or 0.0))


def ranked(runs: list[Run]) -> pd.DataFrame:
    """One benchmark's runs (same task variant and model), one row per method, best first. Seeds
    of the same method are averaged (the row says how many)."""
    by_method: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_method[r.method].append(r)
    rows = []
    for method, rs in by_method.items():
        vals = [r.main_value for r in rs if r.main_value is not None]
        rows.append(
            {
                "method": method,
                "family": rs[0].family,
                "value": sum(vals) / len(vals) if vals else None,
                "stderr": rs[0].main_stderr if len(rs) == 1 else None,
                "seeds": len(rs),
                "calibrated": all(r.calibrated for r in rs),
                "run_id": rs[0].run_id,
            }
        )
    direction = runs[0].direction if runs else "higher"
    rows.sort(key=lambda row: _sort_key(direction)(row["value"]))
    for i, row in enumerate(rows):
        row["rank"] = i + 1 if row["value"] is not None else None
    cols = ["rank", "method", "family", "value", "stderr", "seeds", "calibrated", "run_id"]
    return pd.DataFrame(rows, columns=cols)


@dataclass
class Board:
    """One overview block: a task variant on a model, its main metric and ranked methods."""

    bench: str
    task: str
    model: str
    zoo: bool
    model_label: str
    metric: str
    metric_display: str
    direction: str
    table: pd.DataFrame
    info: object = None  # the metric's schema entry (formats values)

    def fmt(self, value) -> str:
        return self.info.fmt(value) if self.info is not None and value == value else ""


def overview(runs: list[Run], schema: Schema) -> list[Board]:
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.bench, r.model)].append(r)
    boards = []
    for (bench, model), rs in sorted(groups.items()):
        main = rs[0].main_metric or ""
        info = schema.metric(main, rs[0].metric(main))
        boards.append(
            Board(
                bench,
                rs[0].task,
                model,
                rs[0].zoo,
                rs[0].model_label,
                main,
                info.display + (f" ({info.unit})" if info.unit else ""),
                info.direction,
                ranked(rs),
                info,
            )
        )
    return boards


def win_rates(boards: list[Board]) -> pd.DataFrame:
    """HELM's mean win rate per method family: on every benchmark, a method's share of the other
    methods of its family (and the baseline) that it beats (ties count half), averaged over the
    benchmarks where it ran."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for b in boards:
        t = b.table.dropna(subset=["value"])
        for fam in set(t["family"]) - {"baseline"}:
            sub = t[t["family"].isin([fam, "baseline"])]
            if len(sub) < 2:
                continue
            values = list(zip(sub["method"], sub["value"]))
            for method, v in values:
                others = [w for m, w in values if m != method]
                wins = sum(
                    1.0 if (v > w if b.direction == "higher" else v < w) else 0.5 if v == w else 0.0 for w in others
                )
                acc[(fam, method)].append(wins / len(others))
    rows = [
        {"family": fam, "method": m, "mean win rate": sum(v) / len(v), "benchmarks": len(v)}
        for (fam, m), v in acc.items()
    ]
    df = pd.DataFrame(rows, columns=["family", "method", "mean win rate", "benchmarks"])
    return df.sort_values(["family", "mean win rate"], ascending=[True, False]).reset_index(drop=True)


def metrics_table(run: Run, schema: Schema) -> pd.DataFrame:
    rows = []
    for name, m in run.record["metrics"].items():
        info = schema.metric(name, m)
        rows.append(
            {
                "metric": info.display,
                "name": name,
                "value": _num(m.get("value")),
                "stderr": _num(m.get("stderr")),
                "n": m.get("n"),
                "unit": info.unit,
                "better": info.direction,
            }
        )
    return pd.DataFrame(rows, columns=["metric", "name", "value", "stderr", "n", "unit", "better"])


def flatten(obj, prefix="") -> list[tuple[str, str]]:
    """Nested provenance / config as (key path, text) rows for a plain table."""
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out or [(prefix, "{}")]
    if isinstance(obj, list) and obj and all(isinstance(x, (dict, list)) for x in obj):
        out = []
        for i, v in enumerate(obj):
            out += flatten(v, f"{prefix}[{i}]")
        return out
    return [(prefix, obj if isinstance(obj, str) else repr(obj) if obj is not None else "")]


def sample_frame(rows: list[dict]) -> pd.DataFrame:
    """Per-sample rows as a table of scalars (lists and objects shown as their JSON text)."""
    import json

    flat = [
        {
            k: (v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, ensure_ascii=False))
            for k, v in r.items()
        }
        for r in rows
    ]
    return pd.DataFrame(flat)


@dataclass
class Comparison:
    metric: str
    field: str | None
    value_a: float | None
    value_b: float | None
    test: str | None
    p_value: float | None
    n_paired: int
    changed: pd.DataFrame
    note: str | None = None


def compare(a: Run, b: Run, samples_a: list[dict], samples_b: list[dict], metric: str) -> Comparison:
    """Pair two runs' samples by id on the metric's per-sample field and test the difference with
    the gate's paired tests (exact McNemar for 0/1 values, paired bootstrap otherwise)."""
    ma, mb = a.metric(metric), b.metric(metric)
    field = ma.get("sample_field") or mb.get("sample_field")
    va, vb = _num(ma.get("value")), _num(mb.get("value"))
    empty = pd.DataFrame(columns=["id", "a", "b", "prediction a", "prediction b"])
    if not isinstance(field, str):
        return Comparison(
            metric,
            None,
            va,
            vb,
            None,
            None,
            0,
            empty,
            f"metric {metric} names no per-sample field, so no paired test is possible",
        )
    xa = {s.get("id"): s for s in samples_a if _num(s.get(field)) is not None}
    xb = {s.get("id"): s for s in samples_b if _num(s.get(field)) is not None}
    ids = [i for i in xa if i in xb and isinstance(i, (str, int))]
    if not ids:
        return Comparison(
            metric, field, va, vb, None, None, 0, empty, "the two runs share no sample ids with a value for this metric"
        )
    x = [float(xa[i][field]) for i in ids]
    y = [float(xb[i][field]) for i in ids]
    test, p = paired_test(x, y)
    changed = pd.DataFrame(
        [
            {
                "id": str(i),
                "a": u,
                "b": v,
                "prediction a": str(xa[i].get("prediction", "")),
                "prediction b": str(xb[i].get("prediction", "")),
            }
            for i, u, v in zip(ids, x, y)
            if u != v
        ],
        columns=list(empty.columns),
    )
    return Comparison(metric, field, va, vb, test, p, len(ids), changed)
