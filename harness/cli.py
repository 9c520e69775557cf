"""`harness` command line: the parser and the entry point. User mistakes exit 2 with one message;
bugs keep their traceback. The commands themselves are in harness.commands."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points

from harness.commands import (
    cmd_docs,
    cmd_eval,
    cmd_fit,
    cmd_gate,
    cmd_leaderboard,
    cmd_list,
    cmd_report,
    cmd_sweep,
    cmd_zoo,
)
from harness import loading
from harness.errors import NoEffect, UserError
from harness.models import DEFAULT_MODEL


# -- parser -----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness", description="Evaluate ML methods on a registry of tasks; write versioned result records."
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="list tasks, methods or models")
    ls.add_argument("what", nargs="?", default="all", choices=["tasks", "methods", "models", "all"])
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument(
        "--model",
        default=None,
        help="with methods: which of them this model can take (zoo:, hf: or a folder; reads its config only)",
    )
    ls.add_argument("--trust-remote-code", action="store_true", help="with --model: allow its own Python code")
    ls.set_defaults(fn=cmd_list)

    ev = sub.add_parser(
        "eval",
        help="evaluate methods on tasks and write records",
        description="Evaluate every --method on every --task (a cross product); one "
        "record per cell. A finished cell is skipped unless --overwrite.",
    )
    ev.add_argument("--task", action="append", required=True, help="task or alias (repeatable), e.g. needle_1k")
    ev.add_argument(
        "--method",
        action="append",
        default=None,
        help="method (repeatable); compose lm methods with +, e.g. yarn+snapkv (default: baseline)",
    )
    ev.add_argument(
        "--model",
        default=None,
        help=f"zoo:<name>, hf:<id> or a folder (default {DEFAULT_MODEL}; tasks that need no LM default to none)",
    )
    ev.add_argument(
        "--task-arg",
        action="append",
        default=[],
        metavar="K=V",
        help="task parameter (repeatable); TASK.K=V targets one task",
    )
    ev.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="K=V",
        help="method parameter (repeatable); METHOD.K=V targets one method",
    )
    ev.add_argument("--limit", type=int, default=None, help="at most N samples per cell")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--fit-seed",
        type=int,
        default=0,
        metavar="N",
        help="load the methods' fit artifacts made by `harness fit --seed N` (default 0); a "
        "non-zero fit seed is part of the run id, so fit seeds spread like --seed",
    )
    ev.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ev.add_argument(
        "--batch-size",
        default="auto",
        help="sequences per forward, or auto (default): 8 for prompts up to 4,096 tokens, "
        "beyond that the fastest measured batch that fits under --memory-cap",
    )
    ev.add_argument(
        "--prefill-chunk",
        default=None,
        metavar="TOKENS",
        help="prefill long prompts this many tokens at a time through the KV cache "
        "(default 512 on a CPU, 2048 on an accelerator; 0 = one forward per prompt): bounds "
        "activation and mask memory",
    )
    ev.add_argument(
        "--memory-cap",
        default=None,
        metavar="GIB",
        help="memory a cell may use beyond the weights (default: half of the free memory); "
        "a cell that cannot fit stops before any work",
    )
    ev.add_argument("--out", default=None, help="results folder (default $HARNESS_RESULTS or results/)")
    ev.add_argument("--overwrite", action="store_true", help="rerun finished cells")
    ev.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load .bin/.pt (pickle) weights, which can run code when loaded; off by default",
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        help="tasks whose backbone weights are missing run a random-init network "
        "(numbers only check the plumbing; the record says calibrated: false)",
    )
    loading.add_arguments(ev)
    ev.set_defaults(fn=cmd_eval)

    ft = sub.add_parser(
        "fit",
        help="run a method's fit stage (training or search) and cache its artifact",
        description="Methods that must be trained or searched first (e.g. longrope without "
        "given factors) store their artifact content-addressed; eval then reuses it (`eval "
        "--fit-seed N` the one made with --seed N).",
    )
    ft.add_argument("--method", required=True)
    ft.add_argument("--model", default=DEFAULT_MODEL)
    ft.add_argument("--task", default=None, help="task whose longest context is the target length")
    ft.add_argument("--task-arg", action="append", default=[], metavar="K=V")
    ft.add_argument("--method-arg", action="append", default=[], metavar="K=V")
    ft.add_argument(
        "--seed",
        "--fit-seed",
        dest="seed",
        type=int,
        default=0,
        metavar="N",
        help="the fit's seed (training data, initialisation, sampling); a non-zero seed is part of "
        "the artifact's key, and `harness eval --fit-seed N` loads it (default 0)",
    )
    ft.add_argument("--device", default="auto")
    ft.add_argument("--overwrite", action="store_true", help="refit even if the artifact exists")
    ft.add_argument("--allow-pickle", action="store_true", help="load .bin/.pt (pickle) weights (see eval)")
    loading.add_arguments(ft)
    ft.set_defaults(fn=cmd_fit)

    gt = sub.add_parser(
        "gate",
        help="compare current records with baseline records (CI regression gate)",
        description="Compare every metric of the cells present in both folders. A metric "
        "regresses when it moves the wrong way by more than its tolerance, max(abs, rel x "
        "|baseline|): default abs 0, rel 1e-6, and never below rel 1e-6 (floating-point noise "
        "between processors) whatever the rules say; where the metric has per-sample values the "
        "change must also be significant in a paired test (exact McNemar for 0/1 values, paired "
        "bootstrap otherwise; p < alpha, default 0.05); deterministic metrics compare at the "
        "tolerance alone. The table lists every changed metric with the rule that decided it. "
        "Exit 0 when every metric holds, 1 on a regression, 2 on bad input: an unreadable "
        "record or rules file, a NaN/inf metric, or nothing compared (empty or missing "
        "folder, no shared cell).",
    )
    gt.add_argument("--baseline", required=True, help="folder of baseline records")
    gt.add_argument("--current", required=True, help="folder of current records")
    gt.add_argument(
        "--rules",
        default=None,
        help="YAML/JSON: {default: {abs, rel}, metrics: {name: {abs, rel}}, "
        "alpha}; tolerances only widen the noise floor (rel 1e-6)",
    )
    gt.set_defaults(fn=cmd_gate)

    rp = sub.add_parser(
        "report",
        help="Markdown table (method x context length) of a task's records",
        description="Read the records of one task and print a method x length table of its "
        "per-length metric; --heatmaps writes the needle depth x length grids as a PNG.",
    )
    rp.add_argument("--task", required=True, help="task name, e.g. needle, passkey, perplexity")
    rp.add_argument("--model", default=None, help="only records of this model id (e.g. zoo:tiny-llama)")
    rp.add_argument("--metric", default=None, help="metric name (default: accuracy or perplexity)")
    rp.add_argument("--results", default=None, help="results folder (default $HARNESS_RESULTS or results/)")
    rp.add_argument("--heatmaps", default=None, metavar="PNG", help="write needle heatmaps to this file")
    rp.set_defaults(fn=cmd_report)

    dc = sub.add_parser(
        "docs",
        help="regenerate the docs site's generated pages",
        description="Write the CLI reference, the task and method tables, the coverage and "
        "result tables under docs/reference/ and the README's tour table, from this parser, "
        "the registry and the committed records (see harness/docsgen.py).",
    )
    from harness import docsgen

    docsgen.add_arguments(dc)
    dc.set_defaults(fn=cmd_docs)

    sw = sub.add_parser(
        "sweep",
        help="run a grid of cells (methods x tasks x models x params x seeds)",
        description="Expand GRID.yaml into cells (see harness/sweep.py for the format) and run "
        "them: locally on a process pool (one device per worker via CUDA_VISIBLE_DEVICES) or "
        "as Slurm job arrays through submitit. Finished cells are skipped, failures retried; "
        "a summary of done / skipped / failed ends the run. Exit 0: nothing failed; 1: some "
        "cells failed; 2: a bad grid file.",
    )
    sw.add_argument("grid", help="grid YAML file")
    sw.add_argument("--executor", choices=["local", "slurm"], default="local")
    sw.add_argument("--workers", type=int, default=1, help="local: processes in the pool")
    sw.add_argument("--retries", type=int, default=1, help="extra attempts for a failed cell")
    sw.add_argument("--out", default=None, help="results folder (default: the grid's `out`, else $HARNESS_RESULTS)")
    sw.add_argument("--device", default="auto", help="device inside each cell (auto, cpu, cuda)")
    sw.add_argument(
        "--devices", default=None, help="local: GPU ids to pin workers to, e.g. 0,1 (default: all visible GPUs)"
    )
    sw.add_argument("--threads", type=int, default=None, help="torch threads per cell")
    sw.add_argument(
        "--cluster",
        default="auto",
        choices=["auto", "slurm", "local", "debug"],
        help="slurm: submitit's backend (local runs the same job arrays without Slurm)",
    )
    sw.add_argument("--max-parallel", type=int, default=8, help="slurm: array concurrency cap")
    sw.add_argument("--slurm-partition", default=None)
    sw.add_argument("--timeout-min", type=int, default=60, help="slurm: time limit per job")
    sw.add_argument("--cpus-per-task", type=int, default=None)
    sw.add_argument("--gpus-per-node", type=int, default=None)
    sw.add_argument("--mem-gb", type=int, default=None)
    sw.add_argument("--dry-run", action="store_true", help="list the cells (run or skip) and stop")
    sw.add_argument("--summary", default=None, help="also write the summary as JSON to this file")
    sw.set_defaults(fn=cmd_sweep)

    lb = sub.add_parser(
        "leaderboard",
        help="serve the Streamlit leaderboard of a results folder",
        description="A read-only web app over the records: overview ranked by each task's "
        "main metric, per-task plots, run detail with samples, paired comparison of two runs.",
    )
    lb.add_argument("--results", default=None, help="results folder (default $HARNESS_RESULTS or results/)")
    lb.add_argument("--port", type=int, default=8501)
    lb.add_argument("--address", default="127.0.0.1", help="interface to listen on (default loopback only)")
    lb.set_defaults(fn=cmd_leaderboard)

    zoo = sub.add_parser("zoo", help="the embedded reference models")
    zsub = zoo.add_subparsers(dest="zoo_cmd", required=True, metavar="ZOO_COMMAND")
    zsub.add_parser("list", help="list zoo models with their measured figures")
    zc = zsub.add_parser("card", help="print a zoo model's card")
    zc.add_argument("name")
    zt = zsub.add_parser("train", help="train a zoo model from its recipe (CPU, deterministic)")
    zt.add_argument("name")
    zt.add_argument("--out", default=None, help="folder to write (default: the zoo's own folder)")
    zt.add_argument("--device", default="cpu", help="cpu (bit-reproducible, the default), cuda or auto")
    zt.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a recipe field (recorded in the card), e.g. steps=100",
    )
    zoo.set_defaults(fn=cmd_zoo)
    for ep in entry_points(group="harness.commands"):  # subcommands outside the core: `harness lm-eval`
        ep.load()(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a, extra = p.parse_known_args(argv)
    if extra and not hasattr(a, "passthrough"):  # only pass-through commands (lm-eval) take foreign arguments
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        a.passthrough = extra
    if getattr(a, "method", "x") is None:
        a.method = ["baseline"]
    try:
        return a.fn(a)
    except UserError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
    except NoEffect as e:
        print(f"harness: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("harness: interrupted; finished records are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`harness report ... | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
