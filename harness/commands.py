"""What each `harness` command does, once harness.cli has parsed its arguments. Heavy modules
(torch, the runner, the models) are imported inside the commands that need them, so `harness list`
and `--help` start fast."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from harness import params, registry
from harness.errors import UserError
from harness.tables import fmt as _fmt, format_table


# -- list -------------------------------------------------------------------------------------
# fields of the registry index that say where a name lives rather than what it is
_INTERNAL = ("module", "alias_params", "length_alias", "prefix", "table")


def _entries(what: str) -> list[dict]:
    out = []
    for table in ("tasks", "methods"):
        if what in (table, "all"):
            out += [{k: v for k, v in e.items() if k not in _INTERNAL} for e in registry.entries(table)]
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


def cmd_list(a) -> int:
    entries = _entries(a.what)
    if getattr(a, "model", None):
        _model_compat(a, entries)
    if a.json:
        print(json.dumps(entries, indent=1))
        return 0
    rows = []
    for e in entries:
        ps = ", ".join(f"{p['name']}={'None' if p['default'] is None else _fmt(p['default'])}" for p in e["params"])
        rows.append([e["name"], e.get("family", e["kind"]), e["summary"][:70], ps[:80]])
        if a.model:
            rows[-1].append({True: "yes", False: "refused", None: "-"}[e.get("applies")])
    head = ["name", "kind/family", "summary", "params (defaults)"] + ([f"on {a.model}"] if a.model else [])
    print(format_table(head, rows))
    for e in entries:
        if e.get("refusal"):
            print(f"refused: {e['refusal']}")
    if a.model:
        print("(yes: the model has what the method patches; a cell may still fail for other reasons)")
    for e in entries:  # bridge families: the table cuts summaries, and these explain how to name one
        if e.get("family", "").endswith("(bridge)"):
            print(f"\n{e['name']}: {e['summary']}")
    if a.what in ("models", "all"):
        print("\nAlso: hf:<org/name> or a local folder (safetensors weights; Hugging Face format).")
    return 0


def _model_compat(a, entries: list[dict]) -> None:
    """Mark each lm method with whether the model can take it (harness.compat), from the model's
    config alone: `applies` true / false (with `refusal`), None for other kinds."""
    from harness import compat, models
    from harness.loading import LoadOptions

    if a.what not in ("methods", "all"):
        raise UserError("--model goes with `harness list methods`: it says which methods apply to the model")
    model = models.skeleton(a.model, LoadOptions(trust_remote_code=a.trust_remote_code))
    for e in entries:
        if e["kind"] == "lm" and "family" in e and not e["family"].endswith("(bridge)"):
            e["refusal"] = compat.refusal(model, registry.method(e["name"]))
            e["applies"] = e["refusal"] is None


# -- eval -------------------------------------------------------------------------------------
def cmd_eval(a) -> int:
    from harness import models, runner
    from harness.loading import LoadOptions

    from harness import records

    models.pick_device(a.device)  # a bad --device, --seed or --out is a user error before any work starts
    params.check_seed(a.seed)
    params.check_seed(a.fit_seed, "--fit-seed")
    records.check_out_folder(a.out or records.default_out())
    loading = LoadOptions.from_args(a)
    loading.check()
    batch_size = _batch_size(a.batch_size)
    chunk = None if a.prefill_chunk is None else _non_negative(a.prefill_chunk)
    cap = None if a.memory_cap is None else _gib(a.memory_cap)
    task_args = params.parse_kv(a.task_arg, "--task-arg")
    if a.allow_uncalibrated:  # tasks whose backbone weights are missing may then run random-init
        if not any("allow_uncalibrated" in params.field_types(registry.task(t)[0]) for t in a.task):
            raise UserError("--allow-uncalibrated: none of these tasks loads backbone weights")
        task_args.setdefault("allow_uncalibrated", "true")
    cells = runner.resolve(
        a.task,
        a.method,
        a.model,
        task_args,
        params.parse_kv(a.method_arg, "--method-arg"),
        a.seed,
        a.limit,
        loading,
        fit_seed=a.fit_seed,
    )
    if a.fit_seed and not any(c.fit_seed for c in cells):
        raise UserError(f"--fit-seed {a.fit_seed}: none of the methods {', '.join(a.method)} has a fit stage")
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
    from harness import fitting, models
    from harness.loading import LoadOptions

    models.pick_device(a.device)
    params.check_seed(a.seed)
    loading = LoadOptions.from_args(a)
    loading.check()
    key, payload = fitting.fit(
        a.method,
        a.model,
        a.task,
        params.parse_kv(a.task_arg, "--task-arg"),
        params.parse_kv(a.method_arg, "--method-arg"),
        a.seed,
        a.device,
        a.overwrite,
        log=lambda m: print(m, file=sys.stderr),
        allow_pickle=a.allow_pickle,
        loading=loading,
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
    return gate.print_report(findings, summary, rules)


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

    if a.summary:  # checked before the sweep, not after it
        from harness import records

        if Path(a.summary).is_dir():
            raise UserError(f"--summary {a.summary}: a folder, expected a file path")
        records.check_out_folder(Path(a.summary).parent, "--summary")
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
    cmd = [  # harness.leaderboard.serve: streamlit run, with the records parsed while the server starts
        sys.executable,
        "-m",
        "harness.leaderboard.serve",
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
                    _generation(zoo, c, name),
                    c.get("architecture"),
                    _fmt(c.get("parameters")),
                    c.get("context_length"),
                    ", ".join(f"{k}={_fmt(v)}" for k, v in ev.items()),
                ]
            )
        print(format_table(["model", "zoo", "architecture", "parameters", "context", "measured"], rows))
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
        log=lambda text: print(text, flush=True),  # a redirected log stays current
        overrides=params.parse_kv(a.set, "--set"),
        device=models.pick_device(a.device),
    )
    return 0


def _generation(zoo, card: dict, name: str) -> str:
    """The committed model's zoo generation, and what to do when the recipe has moved on."""
    v = zoo.version_of(card)
    if v >= zoo.ZOO_VERSION:
        return f"v{v}"
    return f"v{v} — recipe is now v{zoo.ZOO_VERSION}, retrain with `harness zoo train {name}`"


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
