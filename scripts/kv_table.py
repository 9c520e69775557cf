"""The README's kv_compression tables, regenerated from the committed records.

    python scripts/kv_table.py [results] [--readme README.md]

Prints one markdown table per context length (a row per method: its budgets, kept and byte
fractions, needle accuracies, ppl ratio, KL vs dense, decode time ÷ dense at that length) and, with
--readme, replaces the block between `<!-- kv-results ... -->` and `<!-- /kv-results -->` with it.
The dense line under each table is the median over the records (each measures its own dense run)."""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

START, END = "<!-- kv-results: generated from results/kv_compression by scripts/kv_table.py -->", "<!-- /kv-results -->"
COLUMNS = [("kept fraction", "kept_fraction", "{:.2f}"), ("bytes fraction", "kv_bytes_fraction", "{:.2f}"),
           ("needle", "needle_accuracy", "{:.2f}"), ("needle (query-aware)", "needle_accuracy_query_aware", "{:.2f}"),
           ("ppl ratio", "ppl_ratio", "{:.2f}"), ("KL vs dense", "kl_vs_dense", "{:.3f}")]


def context_length(rec: dict) -> int:
    """The task's context length, from the record's task parameters (whether `harness eval` or a
    sweep made it)."""
    return int(rec["task"]["params"]["context_length"])


def tables(results: Path) -> str:
    by_len: dict[int, list[dict]] = {}
    for f in sorted((results / "kv_compression").glob("*/*/*.json")):
        rec = json.loads(f.read_text())
        by_len.setdefault(context_length(rec), []).append(rec)
    out = []
    for n in sorted(by_len):
        recs = sorted(by_len[n], key=lambda r: r["method"]["name"])
        out += [f"**{n} tokens**", "",
                "| method | budgets | " + " | ".join(c for c, _, _ in COLUMNS) + " | decode ms/token (÷ dense) |",
                "|---" * (len(COLUMNS) + 3) + "|"]
        for rec in recs:
            m, budgets = rec["metrics"], [b for b in rec["details"]["budgets"] if b != "dense"]
            cells = [" / ".join(fmt.format(m[f"{key}@{b}"]["value"]) for b in budgets) for _, key, fmt in COLUMNS]
            ratio = " / ".join(f"{m[f'decode_time_ratio@{n}@{b}']['value']:.2f}" for b in budgets)
            out.append(f"| `{rec['method']['name']}` | {' / '.join(budgets)} | " + " | ".join(cells) + f" | {ratio} |")
        needle = statistics.median(r["metrics"]["needle_accuracy@dense"]["value"] for r in recs)
        dense_ms = statistics.median(r["metrics"][f"decode_ms_per_token@{n}@dense"]["value"] for r in recs)
        out += ["", f"dense (median over the records): needle {needle:.2f}, ms/token {dense_ms:.1f}", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", default="results")
    ap.add_argument("--readme", default=None, help="replace the kv-results block of this file")
    a = ap.parse_args()
    text = tables(Path(a.results))
    if not a.readme:
        print(text, end="")
        return
    readme = Path(a.readme)
    body = readme.read_text()
    block = re.compile(r"<!-- kv-results[^>]*-->\n.*?<!-- /kv-results -->", re.S)
    if not block.search(body):
        raise SystemExit(f"{readme}: no <!-- kv-results --> block")
    readme.write_text(block.sub(lambda _: f"{START}\n{text}{END}", body, count=1))


if __name__ == "__main__":
    main()
