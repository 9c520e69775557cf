"""Start-up time of the command line: wall seconds of `harness list methods` and `harness --help` in
a fresh interpreter, beside a bare `python -c pass` run in the same loop (the interpreter's own
start, which no change to the harness can remove). Alternating, median of several repeats. Not a
test: run this file.

    python benchmarks/startup.py [--repeats 7] [--out benchmarks/results/startup_cpu.json]

`harness list` reads harness/registry_index.json instead of importing every task and method (and
torch with them); before the index it took about 3.2 s here.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "harness --help": [sys.executable, "-m", "harness.cli", "--help"],
    "harness list methods": [sys.executable, "-m", "harness.cli", "list", "methods"],
    "harness list": [sys.executable, "-m", "harness.cli", "list"],
}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    a = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in CASES}
    for _ in range(a.repeats):  # alternating, so a busy moment hits every case alike
        for name, cmd in CASES.items():
            times[name].append(wall(cmd))
    base = statistics.median(times["python -c pass"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {"command": name, "median_s": round(med, 3), "min_s": round(min(ts), 3), "vs_python": round(med / base, 2)}
        )
        print(f"{name:24s} median {med:6.3f} s  min {min(ts):6.3f} s  {med / base:5.2f}x bare python")
    if a.out:
        out = {
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}",
            "command": " ".join(["python benchmarks/startup.py", *sys.argv[1:]]),
            "repeats": a.repeats,
            "rows": rows,
        }
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
