"""`harness` command line. User mistakes exit 2 with one message; bugs keep their traceback."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from harness import params, registry
from harness.errors import NoEffect, UserError
from harness.models import DEFAULT_MODEL


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


# -- list -------------------------------------------------------------------------------------
def _entries(what: str) -> list[dict]:
    registry.load()
    out = []
    if what in ("tasks", "all"):
        for name, cls in sorted(registry.TASKS.items()):
            out.append(
                {
                    "name": name,
                    "kind": "task",
                    "summary": cls.summary or _first_line(cls),
                    "accepts": list(cls.accepts),
                    "main_metric": cls.main_metric,
                    "version": cls.version,
                    "aliases": sorted(cls.aliases) + ([f"{cls.length_alias}_<N>k"] if cls.length_alias else []),
                    "params": params.describe(cls),
                }
            )
        out += _families("task")
    if what in ("methods", "all"):
        for name, cls in sorted(registry.METHODS.items()):
            out.append(
                {
                    "name": name,
                    "kind": cls.kind,
                    "family": cls.family,
                    "summary": _first_line(cls),
                    "paper": cls.paper,
                    "patches": sorted(getattr(cls, "patches", ())),
                    "params": params.describe(cls),
                }
            )
        out += _families("method")
    if what in ("models", "all"):
        from harness.zoo import registry as zoo

        for name in zoo.names():
            card = zoo.card(name)
            out.append(
                {
                    "name": f"zoo:{name}",
                    "kind": "zoo model",
                    "summary": card.get("summary", ""),
                    "params": [],
                    "parameters": card.get("parameters"),
                    "sha256": card.get("sha256"),
                }
            )
    return out


def _families(table: str) -> list[dict]:
    return [
        {"name": f"{p}:<name>", "kind": f.kind or table, "family": f"{p} (bridge)", "summary": f.summary, "params": []}
        for p, f in sorted(registry.FAMILIES.items())
        if f.table == table
    ]


def _first_line(cls) -> str:
    return (cls.__doc__ or "").strip().split("\n")[0]


def cmd_list(a) -> int:
    entries = _entries(a.what)
    if a.json:
        print(json.dumps(entries, indent=1))
        return 0
    rows = []
    for e in entries:
        ps = ", ".join(f"{p['name']}={'None' if p['default'] is None else _fmt(p['default'])}" for p in e["params"])
        rows.append([e["name"], e.get("family", e["kind"]), e["summary"][:70], ps[:80]])
    print(format_table(["name", "kind/family", "summary", "params (defaults)"], rows))
    for e in entries:  # bridge families: the table cuts summaries, and these explain how to name one
        if e.get("family", "").endswith("(bridge)"):
            print(f"\n{e['name']}: {e['summary']}")
    if a.what in ("models", "all"):
        print("\nAlso: hf:<org/name> or a local folder (safetensors weights; Hugging Face format).")
    return 0


# -- eval -------------------------------------------------------------------------------------
def cmd_eval(a) -> int:
    from harness import models, runner

    models.pick_device(a.device)  # a bad --device is a user error before any work starts
    batch_size = _batch_size(a.batch_size)
    chunk = None if a.prefill_chunk is None else _non_negative(a.prefill_chunk)
    cap = None if a.memory_cap is None else _gib(a.memory_cap)
    task_args = params.parse_kv(a.task_arg, "--task-arg")
    if a.allow_uncalibrated:  # tasks whose backbone weights are missing may then run random-init
        if not any("allow_uncalibrated" in params.field_types(registry.task(t)[0]) for t in a.task):
            raise UserError("--allow-uncalibrated: none of these tasks loads backbone weights")
        task_args.setdefault("allow_uncalibrated", "true")
    cells = runner.resolve(
        a.task, a.method, a.model, task_args, params.parse_kv(a.method_arg, "--method-arg"), a.seed, a.limit
    )
    progress = None
    if not a.no_progress:
        from tqdm.auto import tqdm

        progress = lambda it, total=None, desc="": tqdm(
            it, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True
        )
    outcomes = runner.evaluate(
        cells,
        device=a.device,
        out=a.out,
        overwrite=a.overwrite,
        batch_size=batch_size,
        trust_remote_code=a.trust_remote_code,
        prefill_chunk=chunk,
        memory_cap=cap,
        allow_pickle=a.allow_pickle,
        progress=progress,
        log=lambda m: print(m, file=sys.stderr),
    )
    rows = []
    for o in outcomes:
        rec = o.record
        main = rec["main_metric"]
        m = rec["metrics"].get(main, {})
        rows.append(
            [
                rec["task"].get("alias") or rec["task"]["name"],
                rec["method"]["name"],
                rec["model"]["id"],
                main,
                _fmt(m.get("value")),
                _fmt(m.get("stderr")),
                m.get("n"),
                "cached" if o.skipped else f"{rec['provenance']['wall_time_s']:.1f}s",
            ]
        )
    print(format_table(["task", "method", "model", "metric", "value", "stderr", "n", "time"], rows))
    if any(o.record["model"].get("zoo") for o in outcomes):
        print("note: zoo models are tiny reference models trained here; these are not numbers for real LLMs.")
    for o in outcomes:
        print(f"record: {o.path}")
    return 0


# -- fit --------------------------------------------------------------------------------------
def cmd_fit(a) -> int:
    from harness import models, runner

    models.pick_device(a.device)
    key, payload = runner.fit(
        a.method,
        a.model,
        a.task,
        params.parse_kv(a.task_arg, "--task-arg"),
        params.parse_kv(a.method_arg, "--method-arg"),
        a.seed,
        a.device,
        a.overwrite,
        a.trust_remote_code,
        log=lambda m: print(m, file=sys.stderr),
        allow_pickle=a.allow_pickle,
    )
    summary = {k: v for k, v in payload.items() if k not in ("provenance", "trace")}
    print(json.dumps(summary, indent=1))
    print(f"artifact: {key}")
    return 0


# -- gate -------------------------------------------------------------------------------------
def cmd_gate(a) -> int:
    from harness import gate

    rules = gate.load_rules(a.rules)
    findings, summary = gate.compare(a.baseline, a.current, rules)
    bad = [f for f in findings if f.regressed]
    moved = [f for f in findings if f.current != f.baseline or f.regressed]
    d = rules["default"]
    print(
        f"gate: {summary['matched']} matching cells, {len(findings)} metrics compared; "
        f"{summary['only_baseline']} cells only in the baseline, {summary['only_current']} only in current"
    )
    print(
        f"gate: a regression moves the wrong way by more than the tolerance max(abs {d['abs']:g}, "
        f"rel {d['rel']:g} x |baseline|), never below rel {gate.NOISE_REL:g} (floating-point noise), and "
        f"where the metric has per-sample values is significant in a paired test (p < {rules['alpha']:g})"
    )
    if moved:
        rows = [
            [
                f.task,
                f.method,
                f.metric,
                _fmt(f.baseline),
                _fmt(f.current),
                _fmt(_rel(f)),
                _fmt(f.tolerance),
                f.rule,
                _fmt(f.p_value),
                "REGRESSION" if f.regressed else "holds",
            ]
            for f in moved
        ]
        print(
            format_table(
                ["task", "method", "metric", "baseline", "current", "rel. change", "tolerance", "rule", "p", "verdict"],
                rows,
            )
        )
    print(
        f"gate: {len(findings) - len(moved)} metrics identical to the baseline, {len(moved) - len(bad)} changed "
        f"within the rule"
    )
    if bad:
        for f in bad:
            print(f"  regression in {f.path}: {f.metric} {f.baseline!r} -> {f.current!r}")
            for sid, x, y in f.changed[:10]:
                print(f"  {f.task}/{f.method} sample {sid}: {x} -> {y}")
        print(f"gate: {len(bad)} regression(s)")
        return 1
    print("gate: all metrics hold")
    return 0


def _rel(f) -> float:
    return (f.current - f.baseline) / abs(f.baseline) if f.baseline else f.current - f.baseline


# -- report -----------------------------------------------------------------------------------
def cmd_report(a) -> int:
    from harness import records, report

    results = Path(a.results) if a.results else records.default_out()
    recs = report.load(results, a.task, a.model)
    models = sorted(report.recs_models(recs))
    path = None
    if a.heatmaps:  # drawn before printing, so `| head` cannot stop it
        path = report.heatmaps(recs, Path(a.heatmaps), f"{a.task}: accuracy by depth x length ({', '.join(models)})")
    print(f"{a.task} on {', '.join(models)} ({len(recs)} records in {results})")
    print(report.markdown(a.task, recs, a.metric))
    if path:
        print(f"heatmaps: {path}")
    return 0


# -- docs -------------------------------------------------------------------------------------
def cmd_docs(a) -> int:
    from harness import docsgen

    return docsgen.run(a)


# -- sweep ------------------------------------------------------------------------------------
def cmd_sweep(a) -> int:
    from harness import sweep

    devices = [d for d in a.devices.split(",") if d.strip()] if a.devices is not None else None
    slurm = {
        "partition": a.slurm_partition,
        "timeout_min": a.timeout_min,
        "cpus_per_task": a.cpus_per_task,
        "gpus_per_node": a.gpus_per_node,
        "mem_gb": a.mem_gb,
    }
    summary = sweep.sweep(
        a.grid,
        a.executor,
        a.workers,
        a.retries,
        a.out,
        a.device,
        devices,
        a.cluster,
        a.max_parallel,
        slurm,
        a.threads,
        a.dry_run,
        log=lambda m: print(m, file=sys.stderr),
    )
    sweep.print_summary(summary)
    if a.summary:
        from harness.records import _atomic_write

        _atomic_write(Path(a.summary), (json.dumps(summary, indent=1) + "\n").encode())
    return 1 if summary["failed"] else 0


# -- leaderboard --------------------------------------------------------------------------------
def cmd_leaderboard(a) -> int:
    import importlib.util
    import os

    if importlib.util.find_spec("streamlit") is None:
        raise UserError("the leaderboard needs streamlit: pip install 'harness-eval[leaderboard]'")
    results = Path(a.results) if a.results else Path(os.environ.get("HARNESS_RESULTS", "results"))
    if not results.is_dir():
        raise UserError(f"--results {results}: not a folder")
    app = Path(__file__).resolve().parent / "leaderboard" / "app.py"
    if not app.is_file():  # an editable install maps harness.leaderboard elsewhere
        from harness import leaderboard

        app = Path(leaderboard.__file__).resolve().parent / "app.py"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.port",
        str(a.port),
        "--server.address",
        a.address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    env = dict(os.environ, HARNESS_RESULTS=str(results.resolve()))
    print(f"leaderboard: http://{a.address}:{a.port} (records from {results}); Ctrl-C stops it", file=sys.stderr)
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)  # become the server: signals reach it, no orphan on stop


# -- zoo --------------------------------------------------------------------------------------
def cmd_zoo(a) -> int:
    from harness.zoo import registry as zoo

    if a.zoo_cmd == "list":
        rows = []
        for name in zoo.names():
            c = zoo.card(name)
            ev = c.get("evaluation", {})
            rows.append(
                [
                    f"zoo:{name}",
                    c.get("architecture"),
                    _fmt(c.get("parameters")),
                    c.get("context_length"),
                    ", ".join(f"{k}={_fmt(v)}" for k, v in ev.items()),
                ]
            )
        print(format_table(["model", "architecture", "parameters", "context", "measured"], rows))
        return 0
    if a.zoo_cmd == "card":
        zoo.card(a.name)  # clear error for an unknown name
        print((zoo.ZOO_DIR / a.name / "README.md").read_text())
        return 0
    from harness.zoo import build
    from harness import models

    build.train_and_save(
        a.name,
        out_dir=Path(a.out) if a.out else None,
        log=print,
        overrides=params.parse_kv(a.set, "--set"),
        device=models.pick_device(a.device),
    )
    return 0


# -- parser -----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness", description="Evaluate ML methods on a registry of tasks; write versioned result records."
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="list tasks, methods or models")
    ls.add_argument("what", nargs="?", default="all", choices=["tasks", "methods", "models", "all"])
    ls.add_argument("--json", action="store_true", help="machine-readable output")
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
    ev.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's own Python code")
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
    ev.set_defaults(fn=cmd_eval)

    ft = sub.add_parser(
        "fit",
        help="run a method's fit stage (training or search) and cache its artifact",
        description="Methods that must be trained or searched first (e.g. longrope without "
        "given factors) store their artifact content-addressed; eval then reuses it.",
    )
    ft.add_argument("--method", required=True)
    ft.add_argument("--model", default=DEFAULT_MODEL)
    ft.add_argument("--task", default=None, help="task whose longest context is the target length")
    ft.add_argument("--task-arg", action="append", default=[], metavar="K=V")
    ft.add_argument("--method-arg", action="append", default=[], metavar="K=V")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--device", default="auto")
    ft.add_argument("--overwrite", action="store_true", help="refit even if the artifact exists")
    ft.add_argument("--trust-remote-code", action="store_true")
    ft.add_argument("--allow-pickle", action="store_true", help="load .bin/.pt (pickle) weights (see eval)")
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
    return p


def _batch_size(v: str):
    if v == "auto":
        return v
    if not v.isdigit() or int(v) < 1:
        raise UserError(f"--batch-size must be a positive number or auto, got {v!r}")
    return int(v)


def _non_negative(v: str) -> int:
    if not v.isdigit():
        raise UserError(f"--prefill-chunk must be a whole number of tokens (0 = no chunking), got {v!r}")
    return int(v)


def _gib(v: str) -> int:
    try:
        x = float(v)
    except ValueError:
        x = float("nan")
    if not math.isfinite(x) or x <= 0 or x > 2**40:
        raise UserError(f"--memory-cap must be a positive number of GiB, got {v!r}")
    return int(x * 2**30)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
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
