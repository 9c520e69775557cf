"""Best-of-N curves from math_prm_bon records: a Markdown table on stdout (the task's own report
table, as `harness report --task math_prm_bon` prints it) and a PNG.

    python scripts/prm_curves.py [RESULTS_DIR] [--png FILE]

Reads every record under RESULTS_DIR/math_prm_bon (written by `harness eval ... --out`), one curve
per (method, parameters): accuracy@N of the method's own pick, with majority@N and pass@N (the same
for every method on the same data) drawn once. Needs matplotlib for the PNG (pinned in the `plots`
extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.tasks.math_prm_bon import MathPrmBon
from harness.tasks.math_prm_bon import report_label as label


def load(root: Path) -> list[dict]:
    recs = []
    for path in sorted((root / "math_prm_bon").rglob("*.json")):
        rec = json.loads(path.read_text())
        if "metrics" in rec:
            recs.append(rec)
    return recs


def curve(rec: dict, metric: str) -> tuple[list[int], list[float]]:
    grid = rec["details"]["grid"]
    return grid, [rec["metrics"][f"{metric}@{n}"]["value"] for n in grid if f"{metric}@{n}" in rec["metrics"]]


def plot(recs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6))
    ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i % 20) for i in range(40)])
    base = max(recs, key=lambda r: len(r["details"]["grid"]))
    for metric, style in (("pass", "k:"), ("majority", "k--")):
        ax.plot(*curve(base, metric), style, label=f"{metric}@N", linewidth=2)
    for rec in sorted(recs, key=label):
        name = rec["method"]["name"]
        special = {
            "precomputed": {"color": "green", "linewidth": 2.5},  # the oracle ceiling
            "beam_search": {"color": "red", "linestyle": "-.", "linewidth": 2},
        }.get(name, {"linewidth": 1})
        if name != "majority":
            ax.plot(*curve(rec, "accuracy"), marker="o", markersize=3, label=label(rec), **special)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (solutions per problem)")
    ax.set_ylabel("accuracy")
    n = base["metrics"]["accuracy"]["n"]
    ax.set_title(f"math_prm_bon, synthetic math world ({n} problems; stochastic-program policy, not an LLM)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="results")
    ap.add_argument("--png", default=None)
    a = ap.parse_args()
    recs = load(Path(a.root))
    if not recs:
        raise SystemExit(f"no math_prm_bon records under {a.root}")
    print(MathPrmBon.report(recs))
    if a.png:
        plot(recs, Path(a.png))


if __name__ == "__main__":
    main()
