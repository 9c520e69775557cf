"""The metric schema: how a metric reads (display name, unit, format, a one-line description) and
each task's main metric and plots. Read from schema.yaml.

Directions are not typed here: every record carries each metric's direction ("higher" or "lower"
is better) as the task that computed it declared it (harness.interfaces.Metric), so the leaderboard
takes it from the record and the two can never disagree. A metric the schema does not list falls
back to what its record says, so records of new tasks render without code or schema changes."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.records import any_below

SCHEMA_FILE = Path(__file__).with_name("schema.yaml")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    display: str
    direction: str  # "higher" or "lower" is better (from the record)
    unit: str = ""
    format: str = ".4g"
    number: float | None = None  # N of a pattern like accuracy@{N}
    base: str | None = None  # the pattern's stem: "accuracy@{N}" -> "accuracy"
    description: str = ""  # one line: what the metric measures ("" when the schema has none)
    degenerate: tuple = ()  # ((method, why its value is trivial here), ...): not ranked on this metric
    # ((other metric, bound, why), ...): a configuration whose records hold that metric below the
    # bound is not ranked on this one (a lossy decoder's τ), whatever the method's name
    unranked_below: tuple = ()
    declared: bool = True  # False: no record declared a direction ("higher" is assumed)

    def fmt(self, value) -> str:
        if not isinstance(value, (int, float)):
            return "" if value is None else str(value)
        try:
            return format(value, self.format)
        except (ValueError, TypeError):
            return f"{value:.4g}"

    @property
    def better(self) -> str:
        if not self.declared:
            return "direction not declared by the record (ranked as higher is better)"
        return f"{self.direction} is better"

    def meaning(self) -> str:
        """One line: the display name (unit), what it measures and which way is better."""
        unit = f" ({self.unit})" if self.unit else ""
        what = self.description or "no description in leaderboard/schema.yaml"
        return f"{self.display}{unit}: {what}; {self.better}."

    def degenerate_for(self, method: str) -> str | None:
        return next((why for m, why in self.degenerate if m == method), None)

    def unranked_for(self, records: list[dict]) -> str | None:
        """Why a configuration with these records is not ranked on this metric, read from the
        records themselves: some record holds one of `unranked_below`'s metrics below its bound."""
        return next((why for other, bound, why in self.unranked_below if any_below(records, other, bound)), None)


_NUMBERED = re.compile(r"^(?P<base>.+?)@(?P<n>-?\d+(?:\.\d+)?)$")


def split_numbered(name: str) -> tuple[str, float] | None:
    """'accuracy@512' -> ('accuracy', 512.0); names without an @number -> None."""
    m = _NUMBERED.match(name)
    return (m.group("base"), float(m.group("n"))) if m else None


@dataclass
class Schema:
    metrics: dict[str, dict] = field(default_factory=dict)
    tasks: dict[str, dict] = field(default_factory=dict)
    _task_cache: dict = field(default_factory=dict, repr=False, compare=False)
    _metric_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, path: Path | None = None) -> "Schema":
        data = yaml.safe_load(Path(path or SCHEMA_FILE).read_text()) or {}
        return cls(metrics=dict(data.get("metrics") or {}), tasks=dict(data.get("tasks") or {}))

    def _entry(self, name: str) -> tuple[dict, float | None, str | None, str]:
        """(entry, number, base, suffix note): exact name, then the {N} pattern, then the part
        before the first @ (needle_accuracy@dense reads as needle_accuracy, "at dense")."""
        entry, number, base, note = self.metrics.get(name), None, None, ""
        numbered = split_numbered(name)
        if numbered:
            base, number = numbered
            if entry is None:
                entry = self.metrics.get(f"{base}@{{N}}")
        if entry is None and "@" in name:
            stem, rest = name.split("@", 1)
            if stem in self.metrics:
                entry, note = self.metrics[stem], f" (at {rest.replace('@', ', ')})"
        return entry or {}, number, base, note

    def metric(self, name: str, record_metric: dict | None = None, task: str | None = None) -> MetricInfo:
        """The schema's entry for `name` (exact, then {N} pattern), the direction and (when the
        schema has none) the unit from the record's own metric, the task's description override.
        A pattern itself ("accuracy@{N}": a chart's family of metrics) reads with N for the number."""
        rec = record_metric if isinstance(record_metric, dict) else {}
        key = (name, rec.get("direction"), rec.get("unit"), task)
        if key in self._metric_cache:
            return self._metric_cache[key]
        entry, number, base, note = self._entry(name)
        n_text = f"{number:g}" if number is not None else ("N" if "{N}" in name else "")
        direction = rec.get("direction")
        description = str(entry.get("description", ""))
        override = ((self.task(task).get("metrics") or {}) if task else {}).get(base or name.split("@")[0])
        if isinstance(override, str):
            description = override
        degenerate = entry.get("degenerate") or {}
        info = MetricInfo(
            name=name,
            display=str(entry.get("display", name)).replace("{N}", n_text) + (note if entry else ""),
            direction=direction if direction in ("higher", "lower") else "higher",
            unit=str(entry.get("unit", rec.get("unit", "")) or ""),
            format=str(entry.get("format", ".4g")),
            number=number,
            base=base,
            description=(description.replace("{N}", n_text) + note) if description else "",
            degenerate=tuple((str(m), str(why)) for m, why in degenerate.items())
            if isinstance(degenerate, dict)
            else (),
            declared=direction in ("higher", "lower"),
            unranked_below=tuple(
                (str(c["metric"]), float(c["below"]), str(c["why"])) for c in entry.get("unranked_below") or ()
            ),
        )
        self._metric_cache[key] = info
        return info

    def task(self, name: str) -> dict:
        """The task's entry: exact name first, then glob patterns (vbench*)."""
        if name not in self._task_cache:  # looked up once per record: 10,000s of calls
            entry = self.tasks.get(name)
            if entry is None:
                entry = next(
                    (e for p, e in self.tasks.items() if any(c in p for c in "*?[") and fnmatch.fnmatchcase(name, p)),
                    None,
                )
            self._task_cache[name] = entry or {}
        return self._task_cache[name]

    def main_metric(self, task: str, record: dict) -> str | None:
        """The task's declared main metric (this file's, else the record's), even where the record
        lacks it: such a record is then listed unranked (kv_compression leaves its equal-memory
        metric out when no row fits), never ranked on whatever metric comes first. Only a record
        that declares none falls back to its first metric."""
        for candidate in (self.task(task).get("main_metric"), record.get("main_metric")):
            if isinstance(candidate, str) and candidate:
                return candidate
        return next(iter(record.get("metrics") or {}), None)
