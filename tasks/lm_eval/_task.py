"""The `lm_eval:<name>` task: lm-eval's evaluator on the cell's model, methods applied, and the
translation of lm-eval's results and per-sample logs into a harness TaskResult."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.tasks.lm_eval import _catalog

# lm-eval's default seeds (random, numpy, torch, few-shot); harness seed s shifts all four by s
LM_EVAL_SEEDS = (0, 1234, 1234, 1234)


@dataclass
class LMEvalTask(Task):
    """An lm-evaluation-harness task or group, run by lm-eval's own evaluator on the harness model
    (through an lm-eval LM whose requests go through every applied `lm` method).

    Typed parameters cover lm-eval's run options; `metadata` (a JSON object, lm-eval's --metadata)
    carries anything a task reads from its metadata (e.g. RULER's max_seq_lengths) and
    `gen_kwargs` (lm-eval's k=v,k=v syntax) overrides generation settings. The harness --limit
    and --seed map to lm-eval's limit and seeds (seed s: lm-eval's defaults 0/1234/1234/1234 + s)."""

    lm_eval_task: ClassVar[str] = ""  # the name after `lm_eval:`, set by the family's build()
    version = "lm_eval"  # per instance: lm-eval version + the task versions
    main_metric = ""  # per instance: the task's first metric, known after run()
    summary = "an lm-evaluation-harness task or group"
    include_path: str | None = field(
        default=None, metadata={"help": "folder of extra lm-eval task YAML files (lm-eval's --include_path)"}
    )
    num_fewshot: int | None = field(default=None, metadata={"help": "few-shot examples; None = the task's own"})
    limit: float | None = field(
        default=None, metadata={"help": "lm-eval's limit: N docs per task, or a fraction < 1 (or use --limit N)"}
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "model context in tokens (truncation, rolling windows; RoPE methods scale to it); "
            "None = max of metadata max_seq_lengths, else the config's max_position_embeddings"
        },
    )
    max_gen_toks: int = field(default=256, metadata={"help": "generation budget when the task sets none"})
    metadata: str | None = field(
        default=None, metadata={"help": 'JSON object merged into the tasks\' metadata, e.g. {"max_seq_lengths":[1024]}'}
    )
    gen_kwargs: str | None = field(
        default=None, metadata={"help": "lm-eval --gen_kwargs, e.g. max_gen_toks=32 (comma-separated k=v)"}
    )
    bootstrap_iters: int = field(
        default=100000, metadata={"help": "bootstrap iterations for non-mean stderrs; 0 = none"}
    )
    apply_chat_template: bool = False
    system_instruction: str | None = None

    def __post_init__(self):
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError("num_fewshot must be >= 0")
        if self.limit is not None and (self.limit <= 0 or (self.limit >= 1 and self.limit != int(self.limit))):
            raise ValueError("limit must be a whole number of docs or a fraction in (0, 1)")
        if self.max_length is not None and self.max_length < 2 or self.max_gen_toks < 1:
            raise ValueError("max_length must be at least 2 and max_gen_toks at least 1")
        self._meta = _json_object(self.metadata, "metadata")
        from lm_eval.utils import simple_parse_args_string

        self._gen = simple_parse_args_string(self.gen_kwargs) if self.gen_kwargs else None
        self._plan = _catalog.plan(self.lm_eval_task, self.include_path)
        self.generates = self._plan.generates  # decoding methods are refused where nothing generates
        versions = ",".join(f"{leaf.name}={leaf.version}" for leaf in self._plan.leaves)
        label = versions if len(versions) <= 80 else hashlib.sha256(versions.encode()).hexdigest()[:12]
        self.version = f"lm_eval {_catalog.lm_eval_version()}; {label}"

    def target_length(self) -> int | None:
        lengths = self._meta.get("max_seq_lengths")
        if self.max_length is None and isinstance(lengths, list) and lengths:
            return max(int(x) for x in lengths)
        return self.max_length

    def takes_chat_template(self) -> bool:
        return True  # lm-eval formats loglikelihood requests with the template too

    def run(self, ctx) -> TaskResult:
        from harness.tasks.lm_eval.family import go_offline

        go_offline()
        import lm_eval
        from lm_eval import simple_evaluate
        from lm_eval.tasks._factory import TaskFactory
        from harness.tasks.lm_eval._adapter import HarnessAdapter

        if ctx.limit is not None and self.limit is not None:
            raise UserError("give either --limit or --task-arg limit, not both")
        limit = ctx.limit if ctx.limit is not None else self.limit
        if limit is not None and limit >= 1:
            limit = int(limit)
        adapter = HarnessAdapter(ctx.lm, self.target_length(), self.max_gen_toks, ctx.seed)
        # tasks that build their data with the model's tokenizer (RULER) read it from metadata,
        # where lm-eval's own CLI puts model_args
        tok = ctx.lm.tokenizer.name_or_path
        meta = {"pretrained": tok, "tokenizer": tok, **self._meta}
        tm = copy.copy(_catalog.manager(self._plan.include_path, self._plan.full_index))
        tm.metadata, tm._factory = meta, TaskFactory(meta=meta)
        seeds = [s + ctx.seed for s in LM_EVAL_SEEDS]
        try:
            out = simple_evaluate(
                model=adapter,
                tasks=[self.lm_eval_task],
                task_manager=tm,
                num_fewshot=self.num_fewshot,
                limit=limit,
                gen_kwargs=self._gen,
                bootstrap_iters=self.bootstrap_iters,
                log_samples=True,
                # the task's own flag, or --apply-chat-template for every generation task
                apply_chat_template=self.apply_chat_template or ctx.lm.chat_template,
                system_instruction=self.system_instruction,
                random_seed=seeds[0],
                numpy_random_seed=seeds[1],
                torch_random_seed=seeds[2],
                fewshot_random_seed=seeds[3],
            )
        except ImportError as e:  # a task's own dependency (RULER: wonderwords, nltk)
            raise UserError(
                f"lm-eval task {self.lm_eval_task!r} needs a package that is not installed: "
                f"{str(e).splitlines()[0] if str(e) else e!r}"
            ) from None
        except (FileNotFoundError, ConnectionError) as e:
            raise UserError(
                f"lm-eval task {self.lm_eval_task!r} could not load its data offline "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the harness "
                f"runs with HF_DATASETS_OFFLINE=1: use a cached dataset or a local task YAML"
            ) from None
        result, self.main_metric = to_task_result(out, self._plan)
        result.provenance = {
            "lm_eval_version": lm_eval.__version__,
            "lm_eval_task_versions": _plain(out.get("versions", {})),
        }
        return result


def _json_object(text: str | None, what: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} must be a JSON object ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _plain(value):
    """JSON-ready copy (lm-eval configs may hold functions, tuples, numpy numbers)."""
    return json.loads(json.dumps(value, default=str, allow_nan=True))


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_key(task: str | None, metric: str, filt: str) -> str:
    """acc; acc/strict-match when a filter other than lm-eval's 'none'; <task>/... inside a group."""
    return (f"{task}/" if task else "") + metric + ("" if filt == "none" else f"/{filt}")


def to_task_result(out: dict, plan: "_catalog.Plan") -> tuple[TaskResult, str]:
    """lm-eval's results (and logged samples) -> (harness metrics and one row per (doc, filter),
    the main metric: the first metric of the group, else of the first task, in lm-eval's order)."""
    results, hib = out["results"], out.get("higher_is_better", {})
    samples = out.get("samples", {})
    leaves = [t for t in results if t in samples]
    groups = [t for t in results if t not in samples]
    single = plan.kind == "task" and len(leaves) == 1
    prefix = (lambda t: None) if single else (lambda t: None if t == plan.name else t)

    rows, per_field = [], {}
    for task in leaves:
        for s in samples[task]:
            filt = s.get("filter", "none")
            row = {
                "id": metric_key(prefix(task), f"doc{s['doc_id']}", filt),
                "task": task,
                "doc_id": s["doc_id"],
                "filter": filt,
                "doc_hash": s["doc_hash"],
                "prompt_hash": s["prompt_hash"],
                "target_hash": s["target_hash"],
                "input_hash": s["prompt_hash"][:16],
                "target": _plain(s["target"]),
                "prediction": _plain(s["filtered_resps"][0] if len(s["filtered_resps"]) == 1 else s["filtered_resps"]),
            }
            for m in s["metrics"]:
                key = metric_key(prefix(task), m, filt)
                row[key] = _plain(s[m])
                per_field.setdefault(key, []).append(row[key])
            rows.append(row)

    metrics: dict[str, Metric] = {}
    first = None
    n_samples = out.get("n-samples", {})
    for task in groups + leaves:
        directions = hib.get(task) or {}
        for key, value in results[task].items():
            metric, comma, filt = key.partition(",")
            if not comma or metric.endswith("_stderr") or not _number(value):
                continue
            higher = directions.get(metric, _any_direction(hib, metric))
            direction = "lower" if higher is False else "higher"
            stderr = results[task].get(f"{metric}_stderr,{filt}")
            stderr = float(stderr) if _number(stderr) else None
            name = metric_key(prefix(task), metric, filt)
            values = per_field.get(name)
            if values and all(v == -1 for v in values):
                continue  # RULER's mark of a context length it did not run (lm-eval prints -1)
            if (
                values
                and all(_number(v) for v in values)
                and abs(sum(values) / len(values) - value) <= 1e-9 * max(1.0, abs(value))
            ):
                m = Metric.mean(values, direction, sample_field=name)  # a mean: keep sufficient stats
                # lm-eval's stderr of a mean is the same sample-stddev formula; it skips it at bootstrap_iters=0
                m.stderr = stderr if stderr is not None else m.stderr
            else:
                n = (n_samples.get(task) or {}).get("effective")
                m = Metric(float(value), direction, n=n, stderr=stderr)
            metrics[name] = m
            first = first or name
    if first is None:
        raise UserError(f"lm-eval task {plan.name!r} produced no numeric metric (predict-only task?)")
    rows.sort(key=lambda r: r["id"])
    data_hash = hashlib.sha256("".join(r["doc_hash"] + r["prompt_hash"] for r in rows).encode()).hexdigest()
    details = {
        "lm_eval": {
            "task": plan.name,
            "kind": plan.kind,
            "results": _plain(results),
            "versions": _plain(out.get("versions", {})),
            "n-shot": _plain(out.get("n-shot", {})),
            "n-samples": _plain(n_samples),
            "higher_is_better": _plain(hib),
            "group_subtasks": _plain(out.get("group_subtasks", {})),
            "configs": _plain(out.get("configs", {})),
            "task_hashes": _plain(out.get("task_hashes", {})),
        }
    }
    return TaskResult(metrics, rows, details, data_hash), first


def _any_direction(hib: dict, metric: str):
    for directions in hib.values():
        if metric in (directions or {}):
            return directions[metric]
    return None
