"""The lm-evaluation-harness bridge, both directions, offline on the task YAMLs in tests/lm_eval_tasks.

Independent references: lm-eval's own `hf` model (HFLM) on the same checkpoint; the harness's own
`perplexity` and `needle` tasks on the same text and prompts; the argmax of the logged
log-likelihoods for multiple-choice accuracy."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read when `datasets` is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")

from harness import fitting, records, registry, runner  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "lm_eval_tasks"
FAST = {"include_path": str(TASKS), "bootstrap_iters": "0"}


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the test YAMLs name their JSONL relative to the repository root


def run_cell(task, method, model, out, task_args=None, method_args=None, limit=None):
    base = FAST if task.startswith("lm_eval:") else {}
    cells = runner.resolve([task], [method], model, {**base, **(task_args or {})}, method_args or {}, limit=limit)
    (o,) = runner.evaluate(cells, device="cpu", out=out, overwrite=True, batch_size=4, log=lambda m: None)
    return o.record, records.read_samples(o.path)


def test_multiple_choice_record(tiny_model, tmp_path):
    meta = json.dumps({"max_seq_lengths": [300], "probe": "x"})
    rec, samples = run_cell("lm_eval:harness_needle_mc", "baseline", tiny_model, tmp_path, {"metadata": meta})
    assert rec["main_metric"] == "acc" and set(rec["metrics"]) == {"acc", "acc_norm"}
    acc = rec["metrics"]["acc"]
    assert acc["direction"] == "higher" and acc["n"] == 6 and acc["sample_field"] == "acc"
    # accuracy = mean over docs of [argmax of the logged choice log-likelihoods == gold]
    hits = [float(max(range(4), key=lambda i: s["prediction"][i][0]) == s["target"]) for s in samples]
    assert acc["value"] == pytest.approx(sum(hits) / len(hits))
    assert [s["acc"] for s in samples] == hits
    p = sum(hits) / len(hits)
    assert acc["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (len(hits) - 1)))  # lm-eval's mean_stderr
    assert len({s["id"] for s in samples}) == 6 and all(len(s["doc_hash"]) == 64 for s in samples)
    prov = rec["provenance"]
    assert prov["lm_eval_version"] == "0.4.13" and prov["lm_eval_task_versions"] == {"harness_needle_mc": 1.0}
    assert rec["task"]["version"].startswith("lm_eval 0.4.13")
    assert rec["details"]["lm_eval"]["configs"]["harness_needle_mc"]["metadata"]["probe"] == "x"
    assert rec["telemetry"]["scored_tokens"] > 0


def test_needle_group_and_generation(tiny_model, tmp_path):
    rec, samples = run_cell("lm_eval:harness_needle", "baseline", tiny_model, tmp_path, limit=2)
    assert {"acc", "harness_needle_mc/acc", "harness_needle_gen/exact_match/digits"} <= set(rec["metrics"])
    assert rec["main_metric"] == "acc"
    assert {s["id"] for s in samples} == {
        f"harness_needle_{t}/doc{i}{f}" for t, f in (("mc", ""), ("gen", "/digits")) for i in range(2)
    }
    assert rec["telemetry"]["generated_tokens"] > 0


@pytest.mark.fidelity(
    "baseline",
    reference="lm-eval's own HFLM on the same checkpoint (log-likelihoods, rolling log-likelihoods, greedy generations)",
    tolerance="1e-6 (rel and abs); exact greedy",
)
def test_adapter_matches_lm_eval_hf_model(tiny_model, tiny_lm):
    """Our LM adapter (baseline) and lm-eval's own HFLM give the same log-likelihoods, rolling
    log-likelihoods and greedy generations on the same checkpoint, truncation included, to 1e-6
    (measured: equal to the last bit on this CPU, both run the same float32 forward per request)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from harness.tasks.lm_eval._adapter import HarnessAdapter

    tm = TaskManager(include_path=str(TASKS), include_defaults=False)
    names = ["harness_needle_mc", "harness_text_rolling", "harness_needle_gen"]
    peer = HFLM(pretrained=tiny_model, device="cpu", dtype="float32", batch_size=4, max_length=64)
    ours = HarnessAdapter(tiny_lm, max_length=64)
    got = [
        simple_evaluate(model=m, tasks=names, task_manager=tm, bootstrap_iters=0, log_samples=True)["samples"]
        for m in (peer, ours)
    ]
    for name in names:
        for a, b in zip(got[0][name], got[1][name], strict=True):
            if name == "harness_needle_gen":
                assert a["resps"] == b["resps"]
                continue
            for (x,), (y,) in zip(a["resps"], b["resps"], strict=True):
                if name == "harness_text_rolling":  # a whole text's log-likelihood
                    assert y == pytest.approx(x, rel=1e-6, abs=1e-6)
                else:  # (log-likelihood, greedy) of one choice
                    assert y[0] == pytest.approx(x[0], rel=1e-6, abs=1e-6) and y[1] == x[1]


def test_perplexity_matches_lm_eval_rolling_loglikelihood(tiny_model, tiny_lm, tmp_path):
    """The cross-check: harness `perplexity` and lm-eval's rolling log-likelihood of the same text.

    Conventions: lm-eval scores every token of the text, the first one given a prefix token (BOS,
    else EOS: HFLM's rule), in disjoint windows of max_length predicted tokens whose context is
    the window itself. The harness scores every token but the text's first, windows of
    context_length tokens advancing by stride. Both compute the same thing when the harness's
    text starts with that prefix token and context_length = max_length + 1, stride = max_length."""
    L = 32
    text = json.loads((TASKS / "text.jsonl").read_text().splitlines()[0])["text"]
    bos = tiny_lm.tokenizer.bos_token
    assert tiny_lm.encode(bos + text) == [tiny_lm.tokenizer.bos_token_id] + tiny_lm.encode(text)
    n_tokens = len(tiny_lm.encode(text))
    assert n_tokens > 5 * L  # several windows, a partial last one
    path = tmp_path / "text.txt"
    path.write_text(bos + text)
    ours, rows = run_cell(
        "perplexity",
        "baseline",
        tiny_model,
        tmp_path / "h",
        {"path": str(path), "context_length": str(L + 1), "stride": str(L), "n_tokens": "100000"},
    )
    theirs, samples = run_cell(
        "lm_eval:harness_text_rolling", "baseline", tiny_model, tmp_path / "l", {"max_length": str(L)}, limit=1
    )
    nll_harness = sum(r["nll_sum"] for r in rows)
    nll_lm_eval = -samples[0]["prediction"]
    assert sum(r["scored_tokens"] for r in rows) == n_tokens
    assert nll_harness == pytest.approx(nll_lm_eval, rel=1e-3)
    assert ours["metrics"][f"perplexity@{L + 1}"]["value"] == pytest.approx(math.exp(nll_lm_eval / n_tokens), rel=1e-3)
    # lm-eval's word perplexity metric is built from the same log-likelihood
    ll, words = samples[0]["word_perplexity"]
    assert ll == pytest.approx(-nll_lm_eval)
    assert theirs["metrics"]["word_perplexity"]["direction"] == "lower"


def test_needle_both_ways_agrees_on_every_sample(tiny_model, tiny_lm, tmp_path):
    """The harness's needle prompts, handed to lm-eval as a generate_until task: every sample's
    greedy continuation and string-match score are the same."""
    from harness.synthetic import sample_seed
    from harness.tasks.needle import Needle

    args = {"context_length": "96", "depths": "2", "samples_per_depth": "2", "max_new_tokens": "8"}
    rec, hs = run_cell("needle", "baseline", tiny_model, tmp_path / "h", args)
    task = Needle(context_length=(96,), depths=2, samples_per_depth=2, max_new_tokens=8)
    docs = []
    for L, d, r in task.samples_plan(0):
        built = task.build(tiny_lm, L, d, sample_seed(0, L, d, r))
        context = tiny_lm.decode(built["ids"])
        assert tiny_lm.encode(context) == built["ids"]  # the text round-trips to the same tokens
        docs.append({"sid": f"L{L}-d{d:g}-r{r}", "context": context, "refs": built["refs"]})
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "needle_check.yaml").write_text(f"""
task: needle_check
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "docs.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{refs[0]}}}}"
generation_kwargs: {{until: [], max_gen_toks: 8, do_sample: false}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
""")
    _, ls = run_cell("lm_eval:needle_check", "baseline", tiny_model, tmp_path / "l", {"include_path": str(folder)})
    by_id = {s["id"]: s for s in hs}
    assert len(ls) == len(hs) == 4
    for s in ls:
        doc = docs[s["doc_id"]]
        h = by_id[doc["sid"]]
        assert s["prediction"] == h["prediction"]
        assert h["score"] == sum(ref.lower() in s["prediction"].lower() for ref in doc["refs"]) / len(doc["refs"])


def test_model_harness_applies_methods_in_lm_eval(tiny_model, tmp_path):
    """lm-eval's evaluator on `--model harness` with yarn gives, sample for sample, what the
    lm_eval: task gives under `harness eval --method yarn`, and differs from the baseline."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    import harness.tasks.lm_eval._model  # noqa: F401  (registers the model, as `harness lm-eval` does)

    tm = TaskManager(include_path=str(TASKS), include_defaults=False)
    out = simple_evaluate(
        model="harness",
        model_args=f"model={tiny_model},method=yarn,factor=4,max_length=128",
        tasks=["harness_needle_mc"],
        task_manager=tm,
        bootstrap_iters=0,
        log_samples=True,
        device="cpu",
    )
    reverse = [s["filtered_resps"] for s in out["samples"]["harness_needle_mc"]]
    _, yarn = run_cell(
        "lm_eval:harness_needle_mc", "yarn", tiny_model, tmp_path / "y", {"max_length": "128"}, {"factor": "4"}
    )
    _, base = run_cell("lm_eval:harness_needle_mc", "baseline", tiny_model, tmp_path / "b", {"max_length": "128"})
    moved = 0.0
    for rv, y, b in zip(reverse, yarn, base, strict=True):
        assert [ll for ll, _ in rv] == pytest.approx([ll for ll, _ in y["prediction"]], rel=1e-6)
        moved = max(moved, max(abs(p[0] - q[0]) for p, q in zip(y["prediction"], b["prediction"])))
    assert moved > 1e-3  # yarn changed the scores (float noise is ~1e-6)
    info = out["config"]
    assert info["harness_method"] == "yarn" and info["harness_methods"][0]["resolved"]["scale"] == 4.0
    assert info["harness_telemetry"]["patched_calls.rope"] > 0


def test_model_harness_refuses_bad_method_args(tiny_model):
    from harness.tasks.lm_eval._model import HarnessModel

    with pytest.raises(UserError, match="Did you mean: factor"):
        HarnessModel(model=tiny_model, method="yarn", facto=2)
    with pytest.raises(UserError, match="both patch rope"):
        HarnessModel(model=tiny_model, method="pi+yarn")


@pytest.mark.slow
def test_real_lm_eval_cli_runs_model_harness(tiny_model, tmp_path):
    """`harness lm-eval --model harness ...` in a fresh interpreter: lm-eval's own CLI, reached through
    the installed `harness.commands` entry point, finds the model the command registered."""
    cli = Path(sys.executable).parent / "harness"
    proc = subprocess.run(
        [
            str(cli),
            "lm-eval",
            "--model",
            "harness",
            "--model_args",
            f"model={tiny_model},method=yarn,factor=2",
            "--tasks",
            "harness_needle_gen",
            "--include_path",
            str(TASKS),
            "--limit",
            "2",
            "--output_path",
            str(tmp_path),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = tmp_path.rglob("results_*.json")
    config = json.loads(result.read_text())["config"]
    assert config["harness_method"] == "yarn" and config["harness_telemetry"]["patched_calls.rope"] > 0


def test_decoding_methods_only_where_the_task_generates():
    with pytest.raises(UserError, match="never generates"):
        runner.resolve(["lm_eval:harness_needle_mc"], ["sps"], None, dict(FAST), {})
    (cell,) = runner.resolve(["lm_eval:harness_needle_gen"], ["sps"], None, dict(FAST), {})
    assert cell.task.generates
    (cell,) = runner.resolve(
        ["lm_eval:harness_needle_mc"], ["yarn"], None, {**FAST, "metadata": '{"max_seq_lengths": [256, 1024]}'}, {}
    )
    assert cell.task.target_length() == 1024  # RoPE methods scale to RULER-style lengths


def test_unknown_task_and_bad_args_exit_2(capsys):
    code = main(["eval", "--task", "lm_eval:harness_needle_mx", "--task-arg", f"include_path={TASKS}"])
    err = capsys.readouterr().err
    assert code == 2 and "harness_needle_mc" in err and len(err.strip().splitlines()) == 1
    for arg, needle in (
        ("metadata=[1]", "JSON object"),
        ("include_path=/no/such/dir", "not a folder"),
        ("limit=2.5", "limit"),
    ):
        code = main(
            ["eval", "--task", "lm_eval:harness_needle_mc", "--task-arg", f"include_path={TASKS}", "--task-arg", arg]
        )
        err = capsys.readouterr().err
        assert code == 2 and needle in err, err


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    from harness.tasks.lm_eval import family

    monkeypatch.setattr(family.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'harness-eval\[lmeval\]'"):
        registry.task("lm_eval:hellaswag")


def test_list_explains_the_family(capsys):
    assert main(["list", "tasks", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert "include_path" in entries["lm_eval:<name>"]["summary"]


registry.load()
# methods that refuse the text-only smoke model (look_m needs a vision-language model) are tested on
# their own models (tests/test_kv_look_m.py), as the matrix does (smoke_not_with)
LM_METHODS = sorted(
    n for n, c in registry.METHODS.items() if c.kind == "lm" and "needle" not in getattr(c, "smoke_not_with", ())
)


@pytest.mark.parametrize("method", LM_METHODS)
def test_every_lm_method_acts_through_lm_eval(method, tiny_model_with, tmp_path, monkeypatch):
    """Each `lm` method runs under lm-eval's evaluator and its own effect check passes (the runner
    fails the cell otherwise): the bridge reaches whatever the method patches or wraps."""
    from harness.interfaces import Method

    cls = registry.METHODS[method]
    model = tiny_model_with(**cls.smoke_model_config)
    method_args = {k: v.replace("{model}", model) for k, v in cls.smoke_args.items()}
    if method == "longheads":  # it acts only beyond its window: one shorter than these prompts
        method_args.update(atten_length="64", chunk_size="16")
    task_args = {"max_length": "256"}  # twice the tiny model's 128 positions: RoPE scale 2
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "artifacts"))
    if cls.fit is not Method.fit:
        try:
            fitting.fit(
                method,
                model,
                "lm_eval:harness_needle_gen",
                {**FAST, **task_args},
                method_args,
                device="cpu",
                log=lambda m: None,
            )
        except UserError as e:
            assert "no fit stage to run" in str(e)
    rec, samples = run_cell("lm_eval:harness_needle_gen", method, model, tmp_path, task_args, method_args, limit=2)
    assert rec["method"]["name"] == method and len(samples) == 2
    assert rec["telemetry"]["generated_tokens"] > 0


def test_results_translation_skips_lengths_ruler_did_not_run():
    """RULER logs -1 for every context length it did not run; only the run lengths become metrics,
    and the first of them is the main metric. Filters name their metrics metric/filter."""
    from harness.tasks.lm_eval._catalog import Leaf, Plan
    from harness.tasks.lm_eval._task import to_task_result

    def sample(i, score, filt="none"):
        return {
            "doc_id": i,
            "filter": filt,
            "doc_hash": f"d{i}",
            "prompt_hash": f"p{i}",
            "target_hash": "t",
            "target": "x",
            "filtered_resps": ["y"],
            "metrics": ["4096", "1024"],
            "4096": -1,
            "1024": score,
        }

    out = {
        "results": {
            "niah": {
                "alias": "niah",
                "4096,none": -1,
                "4096_stderr,none": 0.0,
                "1024,none": 0.5,
                "1024_stderr,none": 0.5,
            }
        },
        "higher_is_better": {"niah": {"4096": True, "1024": True}},
        "samples": {"niah": [sample(0, 1.0), sample(1, 0.0)]},
        "versions": {"niah": 1.0},
    }
    result, main = to_task_result(out, Plan("niah", "task", None, True, [Leaf("niah", "generate_until", 1.0)]))
    assert main == "1024" and set(result.metrics) == {"1024"}
    assert result.metrics["1024"].value == 0.5 and result.metrics["1024"].count == 2
    assert [r["id"] for r in result.samples] == ["doc0", "doc1"]


def test_bridge_goes_offline_unless_told_otherwise(monkeypatch):
    import datasets.config
    import huggingface_hub.constants
    from harness.tasks.lm_eval.family import go_offline

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    registry.task("lm_eval:harness_needle_mc")  # building the task class goes offline
    assert datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's say wins
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    go_offline()
    assert not huggingface_hub.constants.HF_HUB_OFFLINE
