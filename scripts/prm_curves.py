"""Best-of-N curves from math_prm_bon records: a Markdown table on stdout (the task's own report
table, as `harness report --task math_prm_bon` prints it) and a PNG.

    python scripts/prm_curves.py [RESULTS_DIR] [--png FILE] [--model ID] [--world-version N]

Reads every record under RESULTS_DIR/math_prm_bon (written by `harness eval ... --out`), one curve
per configuration (method and parameters): accuracy@N of the method's own pick, with majority@N and
pass@N (the same for every method on the same data) drawn once. A configuration run with several
seeds is one curve, the mean over its seeds with a ± sd band (tasks/_prm_report.py); configurations
are never pooled, nor are pools (a figure draws one: --model and --world-version choose it). Needs matplotlib for the PNG (pinned in the `plots` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.tasks import _prm_report
from harness.tasks.math_prm_bon import MathPrmBon


def load(root: Path) -> list[dict]:
    recs = []
    for path in sorted((root / "math_prm_bon").rglob("*.json")):
        rec = json.loads(path.read_text())
        if "metrics" in rec:
            recs.append(rec)
    return recs


def draw(ax, grid: list[int], spreads: list, fmt: str | None = None, **style) -> None:
    """One curve: the mean over the seeds at each N, a ± sd band where there are several seeds."""
    pts = [(n, s) for n, s in zip(grid, spreads) if s is not None]
    xs, means = [n for n, _ in pts], [s.mean for _, s in pts]
    line = ax.plot(xs, means, *([fmt] if fmt else []), **style)[0]
    if any(s.sd for _, s in pts):
        sd = [s.sd or 0.0 for _, s in pts]
        lo, hi = [m - d for m, d in zip(means, sd)], [m + d for m, d in zip(means, sd)]
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)


def plot(recs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6))
    ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i % 20) for i in range(40)])
    grid, base, groups = _prm_report.curves(recs)
    for metric, style in (("pass", "k:"), ("majority", "k--")):
        draw(ax, grid, _prm_report.curve(base, metric, grid), style, label=f"{metric}@N", linewidth=2)
    for label, g in groups:
        name = g.records[0]["method"]["name"]
        special = {
            "precomputed": {"color": "green", "linewidth": 2.5},  # the oracle ceiling
            "beam_search": {"color": "red", "linestyle": "-.", "linewidth": 2},
        }.get(name, {"linewidth": 1})
        if name != "majority":
            seeded = f" ({len(g.seeds)} seeds)" if len(g.seeds) > 1 else ""
            spreads = _prm_report.curve(g.records, "accuracy", grid)
            draw(ax, grid, spreads, marker="o", markersize=3, label=label + seeded, **special)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (solutions per problem)")
    ax.set_ylabel("accuracy")
    seeds = sorted({r.get("seed") for r in recs}, key=repr)
    key = _prm_report.pool_key(recs[0])
    sampler = f"{recs[0]['model']['id']}, " if key[1].startswith("generate") else ""
    ax.set_title(
        f"math_prm_bon: {_prm_report.pool_title(key)}\n{sampler}"
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        + (" (mean ± sd over the seeds)" if len(seeds) > 1 else ""),
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")  # the legend sits outside the axes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="results")
    ap.add_argument("--png", default=None)
    ap.add_argument("--model", default=None, help="only the records made with this model id (none: the world's policy)")
    ap.add_argument("--world-version", type=int, default=None, help="only the records on this world version")
    ap.add_argument("--problems", type=int, default=None, help="only the records on pools of this many problems")
    a = ap.parse_args()
    recs = load(Path(a.root))
    if a.model:
        recs = [r for r in recs if r["model"]["id"] == a.model]
    if a.world_version:
        recs = [r for r in recs if _prm_report.pool_key(r)[0] == a.world_version]
    if a.problems:
        recs = [r for r in recs if _prm_report.pool_key(r)[2].startswith(f"{a.problems} problems ")]
    if not recs:
        raise SystemExit(f"no math_prm_bon records under {a.root} for the model, world version and pool size asked for")
    print(MathPrmBon.report(recs))
    split = _prm_report.pools(recs)
    if a.png and len(split) > 1:  # one figure is one pool: its oracle and majority curves are the pool's
        keys = "; ".join(_prm_report.pool_title(key) for key, _ in split)
        raise SystemExit(
            f"the records hold several pools ({keys}): choose one with --model, --world-version and --problems"
        )
    if a.png:
        plot(recs, Path(a.png))


if __name__ == "__main__":
    main()
