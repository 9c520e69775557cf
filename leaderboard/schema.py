"""The metric schema: how a metric reads (display name, direction, unit, format) and each task's
main metric and plots. Read from schema.yaml; a metric the schema does not list falls back to what
its record says, so records of new tasks render without code or schema changes."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SCHEMA_FILE = Path(__file__).with_name("schema.yaml")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    display: str
    direction: str  # "higher" or "lower" is better
    unit: str = ""
    format: str = ".4g"
    number: float | None = None  # N of a pattern like accuracy@{N}
    base: str | None = None  # the pattern's stem: "accuracy@{N}" -> "accuracy"

    def fmt(self, value) -> str:
        if not isinstance(value, (int, float)):
            return "" if value is None else str(value)
        try:
            return format(value, self.format)
        except (ValueError, TypeError):
            return f"{value:.4g}"


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

    @classmethod
    def load(cls, path: Path | None = None) -> "Schema":
        data = yaml.safe_load(Path(path or SCHEMA_FILE).read_text()) or {}
        return cls(metrics=dict(data.get("metrics") or {}), tasks=dict(data.get("tasks") or {}))

    def metric(self, name: str, record_metric: dict | None = None) -> MetricInfo:
        """The schema's entry for `name` (exact, then {N} pattern), else the record's own fields."""
        rec = record_metric if isinstance(record_metric, dict) else {}
        entry, number, base = self.metrics.get(name), None, None
        numbered = split_numbered(name)
        if numbered:
            base, number = numbered
            if entry is None:
                entry = self.metrics.get(f"{base}@{{N}}")
        entry = entry or {}
        n_text = f"{number:g}" if number is not None else ""
        direction = entry.get("direction") or rec.get("direction")
        return MetricInfo(
            name=name,
            display=str(entry.get("display", name)).replace("{N}", n_text),
            direction=direction if direction in ("higher", "lower") else "higher",
            unit=str(entry.get("unit", rec.get("unit", "")) or ""),
            format=str(entry.get("format", ".4g")),
            number=number,
            base=base,
        )

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
        metrics = record.get("metrics") or {}
        for candidate in (self.task(task).get("main_metric"), record.get("main_metric")):
            if isinstance(candidate, str) and isinstance(metrics.get(candidate), dict):
                return candidate
        return next(iter(metrics), None)
