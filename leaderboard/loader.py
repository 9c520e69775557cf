"""Read a results folder into runs for the leaderboard. A pure reader: nothing is written.

Every file that is not a valid record is skipped and counted with its reason — a symlink (never
followed: a link can point anywhere on the machine), a file over the size limit (never read), a
temporary file of an interrupted write, binary junk, truncated JSON, another schema version, a
FIFO or device named *.json (never opened), a file name that is not UTF-8, a second record with
the same run id, or a record whose fields have the wrong shape — so a hostile or half-written
folder never hangs or breaks the app (harness.resultsdir does the scan). A record's samples are
read on demand, verified against its samples_sha256."""

from __future__ import annotations

import gc
import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import records, resultsdir
from harness.zoo.registry import model_key
from harness.leaderboard.schema import Schema

MAX_RECORD_BYTES = records.MAX_RECORD_BYTES
MAX_SAMPLES_BYTES = records.MAX_SAMPLES_BYTES


@dataclass
class Run:
    """One valid record and the fields the views sort and filter on."""

    path: str  # relative to the results folder
    record: dict
    run_id: str
    task: str
    bench: str  # task label + the params that distinguish its variants
    method: str
    family: str
    model: str
    zoo: bool
    model_label: str
    calibrated: bool
    seed: object
    main_metric: str | None
    main_value: float | None
    main_stderr: float | None
    direction: str
    started: str
    config: str = ""  # the configuration: everything that defines the cell except its seed (an id)
    params: dict = field(default_factory=dict)  # the method's parameters, flat ("budget", "a.budget")
    main_n: int | None = None  # samples behind the main metric

    def metric(self, name: str) -> dict:
        m = self.record["metrics"].get(name)
        return m if isinstance(m, dict) else {}


@dataclass
class Results:
    root: Path
    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def skip_counts(self) -> Counter:
        return Counter(reason.split(":")[0] for _, reason in self.skipped)

    def by_id(self, run_id: str) -> Run | None:
        return next((r for r in self.runs if r.run_id == run_id), None)


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _count(x) -> int | None:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 else None


def _shape_error(rec: dict) -> str | None:
    """Checks beyond records.validate that the views rely on (names are strings, metrics dicts)."""
    for key in ("task", "method", "model"):
        if not isinstance(rec[key], dict) or not isinstance(rec[key].get("name" if key != "model" else "id"), str):
            return f"field {key!r} has no name"
    if not isinstance(rec["metrics"], dict) or not all(isinstance(v, dict) for v in rec["metrics"].values()):
        return "metrics is not a mapping of metric objects"
    if not isinstance(rec["run_id"], str) or not isinstance(rec["provenance"], dict):
        return "run_id or provenance has the wrong type"
    for key in ("details", "telemetry"):
        if rec.get(key) is not None and not isinstance(rec[key], dict):
            return f"{key} is not a mapping"
    return None


def _malformed(rec: dict) -> str | None:
    problem = _shape_error(rec)
    return f"malformed record: {problem}" if problem else None


_FAMILY_CACHE: dict[str, str] = {}


def method_family(component: dict) -> str:
    """A component's family: the record's own field, else the registry's (older records)."""
    fam = component.get("family")
    if isinstance(fam, str) and fam:
        return fam
    name = str(component.get("name", ""))
    if ":" in name:
        return name.split(":")[0]
    if name not in _FAMILY_CACHE:
        try:
            from harness import registry

            known = {e["name"]: e.get("family", "other") for e in registry.entries("methods")}
            _FAMILY_CACHE[name] = known.get(name, "other")
        except Exception:  # a broken plugin must not take the leaderboard down
            _FAMILY_CACHE[name] = "other"
    return _FAMILY_CACHE[name]


def record_family(rec: dict) -> str:
    comps = [c for c in (rec["method"].get("components") or []) if isinstance(c, dict)]
    if not comps:
        comps = [{"name": n} for n in str(rec["method"]["name"]).split("+")]
    fams = sorted({method_family(c) for c in comps} - {"baseline"})
    return "+".join(fams) or "baseline"


def config_key(rec: dict) -> str:
    """What defines a configuration: task (name, version, params, limit), method (name, params) and
    model (id, weights) — the run id's inputs less the seed. Runs that share it differ only in
    their seed and are averaged as seeds; runs that do not are different configurations."""
    task, method, model = rec["task"], rec["method"], rec["model"]
    return records.canonical(
        [
            task.get("name"),
            task.get("version"),
            task.get("params"),
            rec.get("limit"),
            method.get("name"),
            method.get("params"),
            model.get("id"),
            model.get("sha256"),
        ]
        + ([method["models"]] if method.get("models") else [])  # a draft's weights, as in the run id
    )


def flat_params(method: dict) -> dict:
    """A method's parameters as one flat mapping: a single component's by their names, a composed
    method's as component.name."""
    params = method.get("params")
    if not isinstance(params, dict):
        return {}
    comps = [(c, p) for c, p in params.items() if isinstance(p, dict)]
    if len(comps) == 1:
        return dict(comps[0][1])
    return {f"{c}.{k}": v for c, p in comps for k, v in p.items()}


def _variant_key(rec: dict) -> str:
    return records.canonical([rec["task"].get("params"), rec.get("limit")])


def _bench_labels(recs: list[dict]) -> list[str]:
    """'needle' when a task has one parameter set here, else 'needle [context_length=512]' naming
    only the parameters that differ between its variants."""
    variants: dict[str, dict[str, dict]] = {}
    for rec in recs:
        task = rec["task"]["name"]
        params = rec["task"].get("params") if isinstance(rec["task"].get("params"), dict) else {}
        variants.setdefault(task, {})[_variant_key(rec)] = dict(params, limit=rec.get("limit"))
    labels = []
    for rec in recs:
        task = rec["task"]["name"]
        vs = variants[task]
        if len(vs) == 1:
            labels.append(task)
            continue
        mine = vs[_variant_key(rec)]
        keys = sorted(
            {k for v in vs.values() for k in v if len({records.canonical(w.get(k)) for w in vs.values()}) > 1}
        )
        shown = ", ".join(f"{k}={_short(mine.get(k))}" for k in keys)
        labels.append(f"{task} [{shown}]")
    return labels


def _short(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def load(root, schema: Schema | None = None) -> Results:
    """Every record under root (and every skipped file with its reason). The cyclic garbage
    collector is paused meanwhile: parsing 10,000 records allocates millions of containers that
    all stay alive, and its passes over them cost more than the parsing itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(root, schema)
    finally:
        if was_enabled:
            gc.enable()


def _load(root, schema: Schema | None) -> Results:
    schema = schema or Schema.load()
    root = Path(root)
    res = Results(root=root)
    if not root.is_dir():
        res.skipped.append((str(root), "missing: not a folder"))
        return res
    found = resultsdir.scan(root, _malformed)
    res.skipped = found.skipped
    good = [(rel, rec) for _, rel, rec in found.found]
    labels = _bench_labels([rec for _, rec in good])
    infos: dict = {}
    for (rel, rec), bench in zip(good, labels):
        task = rec["task"]["name"]
        main = schema.main_metric(task, rec)
        m = rec["metrics"].get(main, {}) if main else {}
        key = (main, m.get("direction"), m.get("unit"))
        if main and key not in infos:
            infos[key] = schema.metric(main, m)
        info = infos.get(key) if main else None
        prov = rec["provenance"]
        model = rec["model"]
        res.runs.append(
            Run(
                path=rel,
                record=rec,
                run_id=rec["run_id"],
                task=task,
                bench=bench,
                method=str(rec["method"]["name"]),
                family=record_family(rec),
                model=model_key(model),  # "zoo:tiny-llama (zoo v1)" for an older zoo generation
                zoo=bool(model.get("zoo")) or str(model["id"]).startswith("zoo:"),
                model_label=str(model.get("label") or ""),
                calibrated=prov.get("calibrated", True) is not False,
                seed=rec.get("seed"),
                main_metric=main,
                main_value=_num(m.get("value")),
                main_stderr=_num(m.get("stderr")),
                direction=info.direction if info else "higher",
                started=str(prov.get("started") or ""),
                config=records.sha256_text(config_key(rec))[:16],
                params=flat_params(rec["method"]),
                main_n=_count(m.get("n")),
            )
        )
    res.runs.sort(key=lambda r: (r.bench, r.model, r.method, str(r.seed), r.run_id))
    return res


_PRELOADED: dict[str, Results] = {}
_READY: dict[str, threading.Event] = {}  # set once a preload of that folder has finished (or failed)


def _key(root) -> str:
    return str(Path(root).resolve())


def preload(root, schema: Schema | None = None) -> Results:
    """Load `root` now and keep it for the app's first session (`harness leaderboard` does this
    while its server starts, so the first visitor does not wait for the parse)."""
    try:
        res = load(root, schema)
        _PRELOADED[_key(root)] = res
        return res
    finally:
        if _key(root) in _READY:
            _READY[_key(root)].set()


def preload_in_background(root, target) -> threading.Thread:
    """Run target(root) (which calls preload, then may warm other things) in a daemon thread;
    preloaded() waits only until the preload itself is done."""
    ready = _READY.setdefault(_key(root), threading.Event())

    def run():
        try:
            target(str(root))
        finally:
            ready.set()

    t = threading.Thread(target=run, name="leaderboard-preload", daemon=True)
    t.start()
    return t


def preloaded(root, schema: Schema | None = None) -> Results | None:
    """The pre-loaded records of `root` (waiting for a preload under way), handed out once: later
    loads read the folder again."""
    ready = _READY.get(_key(root))
    if ready is not None:
        ready.wait()  # (the preload sets it through _READY: popped only afterwards)
        _READY.pop(_key(root), None)
    return _PRELOADED.pop(_key(root), None)


def forget_preloaded() -> None:
    _PRELOADED.clear()


def load_samples(root, run: Run) -> tuple[list[dict], str | None]:
    """The run's per-sample rows, or ([], reason) when the sidecar is missing, unreadable, not a
    regular file, over MAX_SAMPLES_BYTES or not the one the record's samples_sha256 names."""
    try:
        return [r for r in records.read_samples(Path(root) / run.path, run.record) if isinstance(r, dict)], None
    except ValueError as e:
        return [], str(e).replace(f"{Path(root) / run.path}: ", "")
