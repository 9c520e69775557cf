"""Seed spread and environment marks for report tables (issue 23: show the seeds' spread, never one
seed picked silently, never configurations pooled; mark the device when rows differ).

A configuration is everything in a record's config except its seed: task (name, version, params),
method (name, params, the weights of the models it names), model (id, weights hash, loading
options) and limit. Records of one configuration form one row (or one cell): each metric as the
mean ± sample sd over the seeds, with the number of seeds stated. Records of different
configurations stay apart.

An environment is where a record ran: its device (the GPU's name on CUDA) and torch version. When
the rows of one table come from more than one, the minority environments get a mark and a legend
line names each (`Environments`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from harness.records import canonical


def config(rec: dict, ignore_task: Iterable[str] = ()) -> dict:
    """The record's configuration without its seed (and without the task params in ignore_task,
    e.g. context_length where a table's columns are the lengths)."""
    skip = set(ignore_task)
    model = rec.get("model", {})
    return {
        "task": {
            "name": rec["task"].get("name"),
            "version": rec["task"].get("version"),
            "params": {k: v for k, v in (rec["task"].get("params") or {}).items() if k not in skip},
        },
        "method": {"name": rec["method"]["name"], "params": rec["method"].get("params")}
        | ({"models": rec["method"]["models"]} if rec["method"].get("models") else {}),
        "model": {"id": model.get("id"), "sha256": model.get("sha256"), "loading": model.get("loading")},
        "limit": rec.get("limit"),
    }


def config_key(rec: dict, ignore_task: Iterable[str] = ()) -> str:
    return canonical(config(rec, ignore_task))


@dataclass(frozen=True)
class Spread:
    """A metric over the seeds of one configuration: mean, sample sd (None for one seed), n seeds."""

    mean: float
    sd: float | None
    n: int

    def text(self, fmt: Callable[[float], str]) -> str:
        return fmt(self.mean) if self.sd is None else f"{fmt(self.mean)} ± {fmt(self.sd)}"


def spread(values: Iterable) -> Spread | None:
    """Mean ± sample sd of the numeric values (None when there are none)."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return None
    return Spread(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


@dataclass
class SeedGroup:
    """The records of one configuration, one per seed."""

    key: str
    records: list[dict]

    @property
    def seeds(self) -> list:
        """The distinct runs: the seed, paired with the fit seed where that is not 0 (a method's
        training seed is a seed of the configuration too)."""
        return sorted(
            {(r.get("seed"), r["fit_seed"]) if r.get("fit_seed") else r.get("seed") for r in self.records}, key=repr
        )

    def metric(self, name: str, field: str = "value") -> Spread | None:
        return spread(r["metrics"].get(name, {}).get(field) for r in self.records)

    def text(self, name: str, fmt: Callable[[float], str], missing: str = "—") -> str:
        """The metric's cell: mean, or mean ± sd over several seeds; `missing` where no record has it."""
        s = self.metric(name)
        return s.text(fmt) if s else missing


def group(recs: Iterable[dict], ignore_task: Iterable[str] = ()) -> list[SeedGroup]:
    """Records grouped by configuration, in first-seen order."""
    ignore = tuple(ignore_task)
    groups: dict[str, SeedGroup] = {}
    for r in recs:
        key = config_key(r, ignore)
        groups.setdefault(key, SeedGroup(key, [])).records.append(r)
    return list(groups.values())


def aggregate(recs: Iterable[dict], metrics: Iterable[str]) -> list[tuple[SeedGroup, dict[str, Spread | None]]]:
    """Per configuration: {metric: Spread (mean, sd, n seeds)} over its seeds."""
    names = list(metrics)
    return [(g, {m: g.metric(m) for m in names}) for g in group(recs)]


def seeds_line(counts: Iterable[int], seeds: Iterable = ()) -> str:
    """The line under a table that says how many seeds its cells have."""
    counts = sorted(set(counts))
    named = sorted(set(seeds), key=repr)
    which = f" ({', '.join(map(str, named))})" if named and len(named) <= 5 else ""
    if not counts:
        return ""
    if counts == [1]:
        return f"Seeds: one per cell{which}; no seed spread measured."
    many = f"{counts[-1]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return f"Seeds: {many} per cell{which}; cells over several seeds show mean ± sample sd over the seeds."


MARKS = ("†", "‡", "§", "¶", "#")


def environment(rec: dict) -> str:
    p = rec.get("provenance", {})
    return f"{p.get('gpu') or p.get('device', '?')}, torch {p.get('torch', '?')}"


class Environments:
    """Marks for the environments of one table's records: none when they all ran in one; otherwise
    the most common environment is unmarked and each other gets a mark, named in `legend`."""

    def __init__(self, recs: Iterable[dict]):
        counts: dict[str, int] = {}
        for r in recs:
            counts[environment(r)] = counts.get(environment(r), 0) + 1
        order = sorted(counts, key=lambda e: (-counts[e], e))
        self.plain = order[0] if order else None
        self.marks = {e: MARKS[i % len(MARKS)] * (1 + i // len(MARKS)) for i, e in enumerate(order[1:])}

    def mark(self, recs: Iterable[dict]) -> str:
        """The marks of the environments these records (a row or a cell) ran in."""
        return "".join(sorted({self.marks[e] for r in recs if (e := environment(r)) in self.marks}))

    def legend(self) -> str:
        if not self.marks:
            return ""
        marked = "; ".join(f"{m} {e}" for e, m in self.marks.items())
        return f"Environments differ between rows: unmarked {self.plain}; {marked}."


def notes(*lines: str) -> list[str]:
    """The non-empty lines to put under a table, each its own paragraph."""
    return [x for line in lines if line for x in ("", line)]
