"""Evaluate one cell (task + params, methods + params, model, seed, fit seed, limit) and write its
record."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness import compat, fitting, generator, journal, models, params, provenance, records, registry
from harness import budget as budget_plan
from harness.budget import duration
from harness.errors import NoEffect, UserError, nearest
from harness.grid import arg_value
from harness.interfaces import Method, MethodContext, Task, TaskContext
from harness.loading import LoadOptions


@dataclass
class _AnyLMTask:
    """What a bridge's methods act in when no harness task runs them (lm-eval's requests)."""

    name: str = "a generating LM task"
    accepts: tuple = ("lm",)
    generates: bool = True


_LM_TASK = _AnyLMTask()


@dataclass
class Cell:
    task: Task
    task_label: str  # the name the user typed (an alias keeps its own name)
    methods: list[Method]
    model: str
    seed: int = 0
    limit: int | None = None
    loading: LoadOptions = field(default_factory=LoadOptions)  # its non-default options enter the run id
    fit_seed: int = 0  # the seed of the fit whose artifact the methods load (harness fit --seed)

    @property
    def method_name(self) -> str:
        return "+".join(m.name for m in self.methods)

    def config(self, model_sha: str | None) -> dict:
        method = {"name": self.method_name, "params": {m.name: params.to_dict(m) for m in self.methods}}
        if weights := method_models(self.methods, self.loading):
            method["models"] = weights  # only when present: every other run id stays the same
        return {
            "task": {"name": self.task.name, "version": self.task.version, "params": params.to_dict(self.task)},
            "method": method,
            "model": {
                "id": self.model,
                "sha256": model_sha,
                **({"loading": opts} if (opts := self.loading.config()) else {}),
            },
            "seed": self.seed,
            "limit": self.limit,
            # only when non-zero: every run id made before fit seeds existed stays the same
            **({"fit_seed": self.fit_seed} if self.fit_seed else {}),
        }

    def fit_flags(self) -> list[str]:
        """`harness fit` flags that give the methods' fit this cell's target length (or synthetic
        math world): the task (when it has a target length or a world version other than 1) with
        the task arguments that differ from its name's defaults."""
        if self.task.target_length() is None and self.task.math_world() == 1:
            return []
        cls, alias = registry.task(self.task_label)
        default = params.to_dict(params.build(cls, alias or {}, f"task {self.task_label}"))
        mine = params.to_dict(self.task)
        return ["--task", self.task_label] + [
            f"--task-arg {shlex.quote(f'{k}={arg_value(v)}')}" for k, v in mine.items() if default.get(k) != v
        ]


def method_models(methods: list[Method], loading: LoadOptions) -> dict[str, str | None]:
    """{"<method>.<param>[<i>]": weights sha256} of the models the methods name (`model_params`)
    besides the LM; an unknown name is refused here, before any model loads."""
    out = {}
    for m in methods:
        for name in m.model_params:
            value = getattr(m, name)
            specs = [value] if isinstance(value, str) else list(value)
            for i, spec in enumerate(specs):
                if spec:
                    key = f"{m.name}.{name}" + (f"[{i}]" if not isinstance(value, str) else "")
                    out[key] = models.identity(spec, loading)[1]
    return out


def _split_args(args: dict[str, str], owners: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """`name.key=v` goes to that owner; plain `key=v` to every owner that has `key`."""
    scoped: dict[str, dict[str, str]] = {o: {} for o in owners}
    plain: dict[str, str] = {}
    for key, value in args.items():
        owner, dot, sub = key.partition(".")
        if dot and owner in scoped:
            scoped[owner][sub] = value
        else:
            plain[key] = value
    return scoped, plain


def _build(cls, scoped: dict[str, str], plain: dict[str, str], what: str, alias: dict[str, str] | None = None):
    names = set(params.field_types(cls))
    values = dict(alias or {})
    values.update({k: v for k, v in plain.items() if k in names})
    values.update(scoped)
    return params.build(cls, values, what)


def resolve(
    task_names: list[str],
    method_names: list[str],
    model: str | None,
    task_args: dict[str, str],
    method_args: dict[str, str],
    seed: int = 0,
    limit: int | None = None,
    loading: LoadOptions | None = None,
    fit_seed: int = 0,
) -> list[Cell]:
    """Validate everything the user asked for, before any model is loaded."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of samples, got {limit}")
    params.check_seed(fit_seed, "--fit-seed")
    tasks = []
    for tname in task_names:
        cls, alias = registry.task(tname)
        tasks.append((tname, cls, alias))
    combos = [compose(mname) for mname in method_names]

    # parameters: every key must be used by at least one task / method of the run
    t_scoped, t_plain = _split_args(task_args, [c.name for _, c, _ in tasks] + [n for n, _, _ in tasks])
    all_m = {c.name: c for combo in combos for c in combo}
    m_scoped, m_plain = _split_args(method_args, list(all_m))
    for key in t_plain:
        if not any(key in params.field_types(c) for _, c, _ in tasks):
            cls = tasks[0][1]
            params.build(cls, {key: t_plain[key]}, f"task {cls.name}")  # raises the precise error
    for key in m_plain:
        if not any(key in params.field_types(c) for c in all_m.values()):
            if len(all_m) == 1:
                cls = next(iter(all_m.values()))
                params.build(cls, {key: m_plain[key]}, f"method {cls.name}")
            raise UserError(
                f"no method of this run has a parameter {key!r} "
                f"(methods: {', '.join(all_m)}); prefix it as METHOD.{key}=..."
            )

    cells = []
    for tname, tcls, alias in tasks:
        scoped = {**t_scoped.get(tcls.name, {}), **t_scoped.get(tname, {})}
        task = _build(tcls, scoped, t_plain, f"task {tname}", alias)
        task.check_model(model, loading or LoadOptions())
        if generator.is_spec(model):  # diffusers installed, a video pipeline, a prompt suite: before any weights
            request = task.generation_request()
            generator.check(model, request, tname, _generating_tasks() if request is None else ())
        for combo in combos:
            check_combination(task, combo, model)
            methods = [_build(c, m_scoped.get(c.name, {}), m_plain, f"method {c.name}") for c in combo]
            for m in methods if generator.is_spec(model) else ():
                if reason := m.generator_refusal():
                    raise UserError(f"method {m.name} cannot drive --model {model}: {reason}")
            cell_model = model or (models.DEFAULT_MODEL if task.uses_lm() else "none")
            cell_loading = LoadOptions() if cell_model == "none" else loading or LoadOptions()
            if cell_model.startswith("zoo:"):  # the zoo has no remote code: the flag changes nothing
                cell_loading = dataclasses.replace(cell_loading, trust_remote_code=False)
            if cell_loading.chat_template and not task.takes_chat_template():
                raise UserError(
                    f"--apply-chat-template: task {tname} does not prompt a model for a generation "
                    f"(it scores text as it is), so a chat template does not apply; drop the flag for it"
                )
            # a cell without a fit stage has no fit seed: it would only copy the cell at fit seed 0
            cell_fit_seed = fit_seed if any(has_fit_stage(m) for m in methods) else 0
            cells.append(Cell(task, tname, methods, cell_model, seed, limit, cell_loading, cell_fit_seed))
    return cells


def has_fit_stage(method: Method) -> bool:
    """Whether the method's class has a fit stage at all (whether this configuration needs one is
    `needs_fit`, which may need the model)."""
    return type(method).fit is not Method.fit


def _generating_tasks() -> list[str]:
    """The registered tasks whose default configuration has a prompt suite a generator can render."""
    registry.load()
    out = []
    for name, cls in sorted(registry.TASKS.items()):
        if cls.generation_request is not Task.generation_request:
            try:
                if cls().generation_request() is not None:
                    out.append(name)
            except Exception:  # a task that cannot be built with its defaults has nothing to offer here
                pass
    return out


def compose(spec: str) -> list[type[Method]]:
    """The method classes of a name or a `+` composition (`yarn+selfextend`)."""
    parts = [p.strip() for p in spec.split("+")]
    if any(not p for p in parts):
        raise UserError(f"method {spec!r}: empty name in a composition (use a+b)")
    return [registry.method(p) for p in parts]


def build_methods(spec: str, args: dict[str, str], task: Task | None = None, hint: str = "") -> list[Method]:
    """Method instances of a composition, validated as `harness eval` validates them: `key=v` goes to
    every method with that parameter, `name.key=v` to one; a key no method has is a UserError (with
    `hint` appended). `task` (default: a generating LM task) is checked against the methods' kinds.
    The public way for bridges (lm-eval's `--model harness`) to build what a user named."""
    combo = compose(spec)
    check_combination(task, combo)
    scoped, plain = _split_args(args, [c.name for c in combo])
    known = {k for c in combo for k in params.field_types(c)}
    for key in plain:
        if key not in known:
            raise UserError(
                f"{key!r} is not a parameter of {spec}.{nearest(key, known)} "
                f"{spec}: {', '.join(sorted(known)) or 'no parameters'}.{' ' + hint if hint else ''}"
            )
    return [_build(c, scoped.get(c.name, {}), plain, f"method {c.name}") for c in combo]


def accepted_kinds(task, model: str | None = None) -> tuple[str, ...]:
    """The method kinds a task takes with this --model: with a video generator (`diffusers:`), a
    task scoring video sources takes noise priors instead, which start the generator's videos."""
    if generator.is_spec(model) and "video_source" in task.accepts:
        return ("noise_prior",)
    return tuple(task.accepts)


def check_combination(task: Task | None, combo: list[type[Method]], model: str | None = None) -> None:
    """Refuse methods the task cannot use (wrong kind, decoding methods on a task that never
    generates) and compositions whose methods patch the same thing. None: a generating LM task."""
    if task is None:
        task = _LM_TASK
    kinds = accepted_kinds(task, model)
    for c in combo:
        if c.kind not in kinds:
            ok = sorted(e["name"] for e in registry.entries("methods") if e["kind"] in kinds)
            hint = ""
            if c.kind == "noise_prior" and "video_source" in kinds:
                hint = f" (a noise prior starts a generator's videos: add --model {generator.PREFIX}PATH)"
            elif generator.is_spec(model) and "noise_prior" in kinds:
                hint = f" (with --model {model} the generator makes the videos; a noise prior starts them)"
            raise UserError(
                f"method {c.name} is of kind {c.kind!r}, but task {task.name} accepts "
                f"{' or '.join(kinds)} methods: {', '.join(ok)}{hint}"
            )
        if "decoding" in getattr(c, "patches", ()) and not task.generates:
            raise UserError(
                f"method {c.name} changes decoding, but task {task.name} only scores text "
                f"(it never generates), so {c.name} would do nothing"
            )
    if len(combo) > 1:
        if any(c.kind != "lm" for c in combo):
            raise UserError("only methods of kind 'lm' compose with '+'")
        names = [c.name for c in combo]
        if len(set(names)) != len(names):
            raise UserError(f"method {'+'.join(names)} names the same method twice")
        for i, a in enumerate(combo):
            for b in combo[i + 1 :]:
                clash = set(a.patches) & set(b.patches)
                if clash:
                    raise UserError(
                        f"methods {a.name} and {b.name} both patch {', '.join(sorted(clash))}; "
                        f"composing them would silently keep only one"
                    )


def locate(cell: Cell, out: Path) -> tuple[dict, str, Path]:
    """The cell's canonical config, run id and record path (no model is loaded)."""
    model_id, sha = models.identity(cell.model, cell.loading)
    config = cell.config(sha)
    config["model"]["id"] = model_id
    rid = records.run_id(config)
    return config, rid, records.record_path(Path(out), config, rid)


@dataclass
class Outcome:
    cell: Cell
    path: Path
    record: dict
    skipped: bool = False
    samples: list = field(default_factory=list)


def evaluate(
    cells: list[Cell],
    device: str = "auto",
    out: Path | None = None,
    overwrite: bool = False,
    batch_size: int | str = "auto",
    progress=None,
    log=print,
    allow_pickle: bool = False,
    prefill_chunk: int | None = None,
    memory_cap: int | None = None,
) -> list[Outcome]:
    """batch_size: a number, or "auto" (see harness.budget); prefill_chunk: tokens per prefill
    forward (None: the LM's default, 0: whole prompts); memory_cap: bytes the cell may use beyond
    the weights (None: half of the free memory)."""
    from harness.lm import LM

    out = Path(out) if out else records.default_out()
    outcomes: list[Outcome] = []
    loaded = None
    located = [locate(cell, out) for cell in cells]
    todo = [overwrite or not records.finished(path, rid) for _, rid, path in located]
    _check_fits([c for c, t in zip(cells, todo) if t and not c.task.uses_lm()], None)
    walls: list[float] = []
    for i, (cell, (config, rid, path)) in enumerate(zip(cells, located)):
        if not todo[i]:
            log(f"skip: {path} is finished (use --overwrite to rerun)")
            outcomes.append(Outcome(cell, path, records.read(path), skipped=True))
            continue
        # progress bars name their cell: "[2/6] needle_1k · yarn: needle/single (10 samples)"
        name = f"[{i + 1}/{len(cells)}] {cell.task_label} · {cell.method_name}"
        cell_progress = _named(progress, name) if progress is not None else None
        t0 = time.perf_counter()
        if not cell.task.uses_lm():
            outcomes.append(_run_cell(cell, config, rid, path, None, None, cell_progress, device=device))
        else:
            if loaded is None:
                loaded = models.load(cell.model, device, allow_pickle=allow_pickle, options=cell.loading)
                for c in cells[i:]:  # a method the model cannot take is refused before any cell runs
                    if c.task.uses_lm():
                        compat.check(loaded, c)
                _check_fits([c for c, t in zip(cells[i:], todo[i:]) if t and c.task.uses_lm()], loaded)
            lm = LM(loaded, 8 if batch_size == "auto" else int(batch_size), prefill_chunk, cell.loading.chat_template)
            budget = (batch_size, memory_cap, log)
            cell_progress = _named(progress, name, lm) if progress is not None else None
            lm.journal = journal.open_for(
                path,
                dict(provenance.environment(loaded.device), run_id=rid),
                functools.partial(provenance.peak_memory, loaded.device),
                fresh=overwrite,
            )
            if lm.journal is not None and lm.journal.note:
                log(f"{name}: {lm.journal.note}")
            outcomes.append(_run_cell(cell, config, rid, path, loaded, lm, cell_progress, budget))
        walls.append(time.perf_counter() - t0)
        left = sum(todo[i + 1 :])
        if progress is not None and left:  # an estimate from the cells run so far (model load included)
            log(
                f"{name} done in {walls[-1]:.0f} s; about {duration(left * sum(walls) / len(walls))} "
                f"left for {left} more cell(s)"
            )
    return outcomes


def _method_context(cell: Cell) -> MethodContext:
    return MethodContext(target_length=cell.task.target_length(), seed=cell.seed, world_version=cell.task.math_world())


def _check_fits(cells: list[Cell], loaded) -> None:
    """A missing fit artifact (any fit seed) stops the run before any cell runs, naming the
    `harness fit` command that makes it (UserError, exit 2)."""
    from harness.lm import LM

    lm = LM(loaded) if loaded is not None and cells else None
    try:
        for cell in cells:
            for m in cell.methods:
                own, sha = _method_lm(m, lm, loaded)
                fitting.require_artifact(m, own, _method_context(cell), sha, cell.model, cell.fit_seed, cell.fit_flags)
    finally:
        if lm is not None:
            lm.close()


def _named(progress, name: str, lm=None):
    """The progress callable with the cell's name before the task's description; with an LM, the
    bar also shows the tokens per second the cell has processed so far (prompt, generated and
    scored tokens, from the LM's telemetry)."""

    def bar(items, total=None, desc=""):
        shown = progress(items, total=total, desc=f"{name}: {desc}" if desc else name)
        return shown if lm is None or not hasattr(shown, "set_postfix_str") else _with_rate(shown, lm)

    return bar


def _with_rate(bar, lm):
    t0 = time.perf_counter()
    for item in bar:
        yield item
        done = lm.journal.replayed if lm.journal else []  # replayed batches cost no time here
        tokens = sum(
            lm.telemetry[k] - sum(e["telemetry"].get(k, 0) for e in done)
            for k in ("prompt_tokens", "generated_tokens", "scored_tokens")
        )
        bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} tokens/s")


def _model_label(model: str) -> str:
    if generator.is_spec(model):
        return "diffusers video pipeline: the cell generated the videos it scored (provenance.generator)"
    return "no model"


def _method_lm(method: Method, lm, loaded) -> tuple:
    """(the LM, its weights sha256) a method acts on: methods of kind lm act on the cell's LM; the
    others never do, even when the task runs one (math_prm_bon samples its pools with it), so a
    verifier's fit artifact stays keyed without a model, as `harness fit` makes it."""
    if method.kind != "lm" or lm is None:
        return None, None
    return lm, loaded.sha256


def _run_cell(
    cell: Cell, config: dict, rid: str, path: Path, loaded, lm, progress, budget=None, device: str = "auto"
) -> Outcome:
    import torch

    started = datetime.now(timezone.utc)
    requested, device = device, loaded.device if loaded else "cpu"
    provenance.reset_peak_memory(device)
    t0 = time.perf_counter()
    torch.manual_seed(cell.seed)
    mctx = _method_context(cell)
    components = []
    try:
        with contextlib.ExitStack() as stack:
            for m in cell.methods:
                own, sha = _method_lm(m, lm, loaded)
                artifact = fitting.attach_artifact(m, own, mctx, sha, cell.model, cell.fit_seed, cell.fit_flags)
                components.append(
                    {
                        "name": m.name,
                        "kind": m.kind,
                        "family": m.family,
                        "paper": m.paper,
                        "artifact": artifact,
                        **({"fit": fitting.cost(artifact)} if artifact else {}),
                        "params": params.to_dict(m),
                        "resolved": m.resolved(own, mctx),
                    }
                )
                if own is not None:
                    stack.enter_context(m.apply(own, mctx))
            planned = budget_plan.plan_cell(cell, lm, budget) if lm is not None and budget else {}
            tctx = TaskContext(
                lm=lm,
                seed=cell.seed,
                limit=cell.limit,
                progress=progress,
                methods=cell.methods,
                model=cell.model,
                device=requested,
                loading=cell.loading,
            )
            result = cell.task.run(tctx)
            for m in cell.methods:  # inside the methods' contexts: their state is still there
                reason = m.check_effect(_method_lm(m, lm, loaded)[0], mctx, result)
                if reason:
                    raise NoEffect(f"{cell.method_name} on {cell.task_label}: {reason}; no record written")
    finally:
        if lm is not None:
            lm.close()
            if lm.journal is not None:  # kept until the record is written: a rerun resumes from it
                lm.journal.close(finished=False)
    wall = time.perf_counter() - t0
    memory = provenance.peak_memory(device)
    timing = journal.timing(lm.journal.replayed if lm is not None and lm.journal else [], wall, memory)
    model = (
        dict(config["model"], zoo=loaded.zoo, **models.zoo_version(loaded))
        | dict(label=models.label(loaded), config=models.facts(loaded))
        | ({"prompt": lm.prompt_format()} if lm is not None else {})
        if loaded
        else dict(config["model"], zoo=False, label=_model_label(cell.model))
    )
    record = {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": rid,
        "task": dict(
            config["task"],
            alias=cell.task_label if cell.task_label != cell.task.name else None,
            **({"resolved": planned["resolved"]} if planned.get("resolved") else {}),
        ),
        "method": dict(config["method"], components=components),
        "model": model,
        "seed": cell.seed,
        "fit_seed": cell.fit_seed,
        "limit": cell.limit,
        "main_metric": cell.task.main_metric,
        "metrics": {k: v.to_dict() for k, v in result.metrics.items()},
        "details": result.details,
        "telemetry": dict(lm.telemetry) if lm is not None else {},
        "provenance": dict(
            provenance.environment(device),
            task_version=cell.task.version,
            data_hash=result.data_hash,
            seed=cell.seed,
            method_artifact=[c["artifact"] for c in components if c["artifact"]] or None,
            model_sha256=loaded.sha256 if loaded else None,
            calibrated=result.details.get("calibrated", True),
            started=started.isoformat(timespec="seconds"),
            **timing,
            **planned.get("provenance", {}),
            **tctx.notes,
            **result.provenance,
        ),
    }
    records.write(path, record, result.samples)
    if lm is not None and lm.journal is not None:
        lm.journal.close(finished=True)
    return Outcome(cell, path, record, samples=result.samples)
