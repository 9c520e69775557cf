"""Leaderboard load + overview render time on 10,000 synthetic records (goal: <= 2 s).

    python benchmarks/leaderboard_load.py [--records 10000] [--repeats 3]

Writes needle-shaped records (per-cell grid in details, four metrics, provenance) for 20 task
variants x 50 methods x 10 seeds into a temporary folder, then times, median of repeats:
  - floor:    reading and parsing the same files with nothing else (what any reader pays; orjson
              when installed, as the loader)
  - load:     harness.leaderboard.loader.load (walk, size/symlink checks, parse, validate, index)
  - tables:   the overview's tables (ranking per task variant, mean win rate per family)
  - render:   the Streamlit app's overview page end to end under AppTest (cold cache: load included)
and reports load / floor as the loader's overhead ratio."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import records
from harness.leaderboard import loader, tables
from harness.leaderboard.schema import Schema

FAMILIES = ["rope", "kv", "spec", "prm", "video"]


def write_records(root: Path, n: int) -> None:
    tasks, methods = 20, 50
    seeds = max(1, n // (tasks * methods))
    grid = [
        {"context_length": L, "depth": d * 100 / 9, "n": 5, "accuracy": 0.5}
        for L in (512, 1024, 2048)
        for d in range(10)
    ]
    made = 0
    for t in range(tasks):
        for m in range(methods):
            for s in range(seeds):
                if made >= n:
                    return
                method = f"method{m:02d}"
                value = ((t * 7 + m * 13 + s) % 100) / 100
                rec = {
                    "schema_version": records.SCHEMA_VERSION,
                    "run_id": f"{t:03d}{m:03d}{s:04d}",
                    "task": {
                        "name": f"task{t:02d}",
                        "version": "1",
                        "params": {"context_length": [512, 1024, 2048]},
                        "alias": None,
                    },
                    "method": {
                        "name": method,
                        "params": {method: {}},
                        "components": [{"name": method, "kind": "lm", "family": FAMILIES[m % 5]}],
                    },
                    "model": {"id": "zoo:tiny-llama", "zoo": True, "label": "embedded zoo model"},
                    "seed": s,
                    "limit": None,
                    "main_metric": "accuracy",
                    "metrics": {
                        k: {"value": value, "direction": "higher", "unit": "fraction", "n": 150, "stderr": 0.04}
                        for k in ("accuracy", "accuracy@512", "accuracy@1024", "accuracy@2048")
                    },
                    "details": {"grid": grid},
                    "telemetry": {"forward_calls": 300},
                    "provenance": {
                        "harness_version": "0.1.0",
                        "git_commit": "0" * 40,
                        "calibrated": True,
                        "started": "2026-11-26T00:00:00+00:00",
                        "threads": 2,
                    },
                }
                folder = root / f"task{t:02d}" / "zoo_tiny-llama" / method
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{rec['run_id']}.json").write_text(json.dumps(rec, indent=1))
                made += 1


def floor(root: Path) -> int:
    count = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                records._fast_loads(fh.read())  # the same parser the loader uses
            count += 1
    return count


def render(root: Path) -> float:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["HARNESS_RESULTS"] = str(root)
    st.cache_resource.clear()
    at = AppTest.from_file(str(Path(loader.__file__).with_name("app.py")), default_timeout=120)
    t0 = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - t0
    if at.exception or not any(str(m.value).startswith("| rank |") for m in at.markdown):
        raise SystemExit(f"the overview did not render: {at.exception}")
    return elapsed


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    schema = Schema.load()
    with tempfile.TemporaryDirectory(prefix="board-bench-") as tmp:
        root = Path(tmp)
        write_records(root, a.records)
        render(root)  # warm-up: imports, Streamlit runtime
        f, f_all = median_time(lambda: floor(root), a.repeats)
        res = loader.load(root, schema)
        assert len(res.runs) == a.records and not res.skipped
        l, l_all = median_time(lambda: loader.load(root, schema), a.repeats)
        t, t_all = median_time(lambda: tables.win_rates(tables.overview(res.runs, schema)), a.repeats)
        r_all = [render(root) for _ in range(a.repeats)]
        r = statistics.median(r_all)
    fmt = lambda xs: "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"
    print(f"records: {a.records} (threads {os.cpu_count()} cpus, python {sys.version.split()[0]})")
    print(f"floor (read + json.loads):   median {f:.2f} s  {fmt(f_all)}")
    print(f"loader.load:                 median {l:.2f} s  {fmt(l_all)}")
    print(f"overview tables:             median {t:.2f} s  {fmt(t_all)}")
    print(f"overview page (AppTest, cold cache, load included): median {r:.2f} s  {fmt(r_all)}")
    print(f"loader overhead ratio (load / floor): {l / f:.2f}")
    print(f"goal <= 2 s for load + overview render: {'met' if r <= 2.0 else 'NOT met'} ({r:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
