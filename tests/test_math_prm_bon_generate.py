"""math_prm_bon with solutions=generate: pools sampled from --model, cached as an artifact.

On a random-initialised tiny Llama: this checks the mechanism (pool shape, seeding, the cache, the
record, the errors), not the quality of any solution; the texts are noise and rarely hold an answer."""

import json
from pathlib import Path

import pytest

from harness import artifacts, models, params, records, runner
from harness.cli import main
from harness.errors import UserError
from harness.lm import LM
from harness.loading import LoadOptions
from harness.mathgrade import extract_answer
from harness.tasks import _sampled_pools as sampled
from harness.tasks.math_prm_bon import MathPrmBon
from tests.conftest import make_tiny_llama

N, NEW = 4, 12


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "math3.jsonl"
    rows = [
        ("a", "What is 2 + 3?", "5"),
        ("b", "Compute 7 \\cdot 6.", "42"),
        ("c", "Simplify \\frac{2}{4}.", "\\frac{1}{2}"),
    ]
    path.write_text("".join(json.dumps({"id": i, "problem": q, "answer": a}) + "\n" for i, q, a in rows))
    return str(path)


@pytest.fixture
def generate_calls(monkeypatch):
    """How many times LM.generate ran (any LM of the process)."""
    calls = []
    original = LM.generate

    def counted(self, *args, **kwargs):
        calls.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LM, "generate", counted)
    return calls


def _args(problems, **extra):
    args = {"solutions": "generate", "problems": problems, "samples": str(N), "max_new_tokens": str(NEW)}
    return args | {"trials": "8", "bootstrap": "10"} | extra


def _eval(model, problems, out, method="majority", method_args=None, seed=0, **extra):
    cells = runner.resolve(["math_prm_bon"], [method], model, _args(problems, **extra), method_args or {}, seed=seed)
    (done,) = runner.evaluate(cells, device="cpu", out=out)
    return records.read(done.path), records.read_samples(done.path)


def _pool_texts(key):
    rows = (artifacts.folder(key) / sampled.POOL_FILE).read_text().splitlines()
    return [json.loads(r)["text"] for r in rows]


def test_pool_shape_record_and_cache_hit_for_another_verifier(
    tiny_model, problems, tmp_path, monkeypatch, generate_calls
):
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "art"))
    rec, rows = _eval(tiny_model, problems, tmp_path / "out")
    pool = rec["details"]["pool"]
    assert len(generate_calls) == 3 and all(len(batch) == N for batch in generate_calls)  # one call of N per problem
    assert [r["n"] for r in rows] == [N, N, N] and [r["id"] for r in rows] == ["a", "b", "c"]  # problems x N
    assert rec["details"]["grid"] == [1, 2, 4]
    assert pool["cache"] == "miss" and (artifacts.folder(pool["artifact"]) / "meta.json").is_file()
    assert pool.items() >= {"samples": N, "temperature": 0.8, "top_p": 1.0, "max_new_tokens": NEW, "seed": 0}.items()
    assert pool["system_prompt"] == sampled.SAL_SYSTEM_PROMPT and pool["chat_template"] is False
    assert pool["model_sha256"] == rec["model"]["sha256"] and rec["provenance"]["model_sha256"] == pool["model_sha256"]
    assert rec["telemetry"]["generated_tokens"] == pool["new_tokens"] > 0
    assert (
        rec["task"]["params"]["samples"] == N and "temperature" not in rec["task"]["params"]
    )  # default: not in the id
    # steps and answers come from the texts by the task's separator and the grader's extraction
    texts = _pool_texts(pool["artifact"])
    assert len(texts) == 3 * N
    assert pool["without_answer"] == sum(extract_answer(t) is None for t in texts)

    # another verifier on the same pool: read from the cache, nothing generated
    rec2, _ = _eval(tiny_model, problems, tmp_path / "out", method="hf_orm", method_args={"model": tiny_model})
    assert len(generate_calls) == 3
    assert rec2["details"]["pool"]["cache"] == "hit" and rec2["details"]["pool"]["artifact"] == pool["artifact"]
    assert "generated_tokens" not in rec2["telemetry"] and "forward_calls" not in rec2["telemetry"]
    assert rec2["provenance"]["data_hash"] == rec["provenance"]["data_hash"]


def test_sampling_is_seeded(tiny_model, problems, tmp_path, monkeypatch):
    keys = {}
    for name, seed in [("first", 0), ("again", 0), ("other", 1)]:  # a fresh cache each time: really sampled
        monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / name))
        rec, _ = _eval(tiny_model, problems, tmp_path / name / "out", seed=seed)
        assert rec["details"]["pool"]["cache"] == "miss"
        keys[name] = (rec["details"]["pool"]["artifact"], _pool_texts(rec["details"]["pool"]["artifact"]))
    assert keys["first"] == keys["again"]
    assert keys["other"][0] != keys["first"][0] and keys["other"][1] != keys["first"][1]
    first = keys["first"][1]
    assert len(set(first[:N])) > 1  # temperature 0.8: the N samples of a problem differ


def test_limit_samples_only_the_evaluated_problems(tiny_model, problems, tmp_path, monkeypatch, generate_calls):
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "art"))
    cells = runner.resolve(["math_prm_bon"], ["majority"], tiny_model, _args(problems), {}, limit=1)
    (done,) = runner.evaluate(cells, device="cpu", out=tmp_path / "out")
    assert len(generate_calls) == 1 and len(records.read_samples(done.path)) == 1


def test_world_problems_solved_by_the_lm(tiny_model, tmp_path, monkeypatch, generate_calls):
    """problems=synthetic with solutions=generate: the world's evaluation problems, each prompted as
    tiny-math is trained (prefix, problem, blank line: prompt=none), N samples of the LM each."""
    from harness import mathworld

    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "art"))
    rec, rows = _eval(tiny_model, "synthetic", tmp_path / "out", world_version="2", world_problems="3", prompt="none")
    base = mathworld.EVAL_SEED_BASE
    probs = mathworld.world(2).pools(3, 0, base)[0]
    assert [r["id"] for r in rows] == [p["id"] for p in probs] and [r["n"] for r in rows] == [N] * 3
    lm = LM(models.load(tiny_model, "cpu"))
    assert [batch[0] for batch in generate_calls] == [lm.prompt_ids(p["problem"], "\n\n") for p in probs]
    pool = rec["details"]["pool"]
    assert pool["world"]["base_seed"] == base and pool["world"]["generator"] == "harness.mathworld2"
    assert pool["system_prompt"] is None and "oracle_steps" not in rows[0]


def test_default_cells_keep_their_params_and_run_ids():
    plain = params.to_dict(MathPrmBon())
    assert not {"samples", "temperature", "top_p", "max_new_tokens", "prompt"} & set(plain)
    assert params.to_dict(MathPrmBon(problems="p.jsonl", solutions="generate", top_p=0.9))["top_p"] == 0.9


def test_clear_errors_before_any_work(tiny_model, problems, tmp_path, generate_calls):
    with pytest.raises(UserError, match="name it with --model"):
        runner.resolve(["math_prm_bon"], ["majority"], None, _args(problems), {})
    with pytest.raises(UserError, match="name it with --model"):
        runner.resolve(["math_prm_bon"], ["majority"], "none", _args(problems), {})
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    cfg = json.loads((Path(tiny_model) / "config.json").read_text())
    (classifier / "config.json").write_text(json.dumps(cfg | {"architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(UserError, match="LlamaForSequenceClassification, which has no text-generating head"):
        runner.resolve(["math_prm_bon"], ["majority"], str(classifier), _args(problems), {})
    with pytest.raises(UserError, match="format stays 'harness'"):
        runner.resolve(["math_prm_bon"], ["majority"], tiny_model, _args(problems, format="sal"), {})
    with pytest.raises(UserError, match="temperature applies only to solutions=generate"):
        runner.resolve(["math_prm_bon"], ["majority"], None, {"temperature": "0.5"}, {})
    with pytest.raises(UserError, match="out of range"):
        runner.resolve(["math_prm_bon"], ["majority"], tiny_model, _args(problems, top_p="1.5"), {})
    with pytest.raises(UserError, match="no chat template"):  # the zoo tokenizer has none
        cells = runner.resolve(
            ["math_prm_bon"], ["majority"], tiny_model, _args(problems), {}, loading=LoadOptions(chat_template=True)
        )
        runner.evaluate(cells, device="cpu", out=tmp_path / "out")
    assert not generate_calls
    cli = ["eval", "--task", "math_prm_bon", "--task-arg", "solutions=generate", "--task-arg", f"problems={problems}"]
    assert main(cli + ["--method", "majority", "--out", str(tmp_path / "cli")]) == 2
    assert main(cli + ["--method", "majority", "--model", str(classifier), "--out", str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "cli").exists()


# -- the system prompt in LM.prompt_ids, against transformers' own rendering ---------------------
SYSTEM = "Solve the following math problem efficiently and clearly."
ROLES = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NO_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}<|user|> {{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for name, template in (("roles", ROLES), ("no_system", NO_SYSTEM)):
        folder = tmp_path_factory.mktemp(name)
        make_tiny_llama(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|system|>", "<|assistant|>", "<|end|>"]})
        tok.chat_template = template
        model = AutoModelForCausalLM.from_pretrained(folder)
        model.resize_token_embeddings(len(tok))
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        out[name] = str(folder)
    return out


def test_system_prompt_through_the_template_or_merged_or_plain(chat_models):
    user = "What is 2 + 3?"
    lm = LM(models.load(chat_models["roles"], "cpu"), chat_template=True)
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    text = lm.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert lm.prompt_ids(user, "\n\n", system=SYSTEM) == lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert lm.prompt_ids(user) != lm.prompt_ids(user, system=SYSTEM)  # cached per system prompt

    refusing = LM(models.load(chat_models["no_system"], "cpu"), chat_template=True)
    merged = [{"role": "user", "content": SYSTEM + "\n\n" + user}]
    text = refusing.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    assert refusing.prompt_ids(user, system=SYSTEM) == refusing.tokenizer(text, add_special_tokens=False)["input_ids"]

    plain = LM(models.load(chat_models["roles"], "cpu"))
    assert plain.prompt_ids(user, "\n\n", system=SYSTEM) == plain.prompt_prefix() + plain.encode(
        SYSTEM + "\n\n" + user + "\n\n"
    )
    assert plain.prompt_ids(user, "A:") == plain.prompt_prefix() + plain.encode(user + "A:")  # unchanged without one


def test_chat_template_pool_records_the_flag(chat_models, problems, tmp_path, monkeypatch):
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "art"))
    keys = []
    for chat in (False, True):
        cells = runner.resolve(
            ["math_prm_bon"],
            ["majority"],
            chat_models["roles"],
            _args(problems),
            {},
            loading=LoadOptions(chat_template=chat),
        )
        (done,) = runner.evaluate(cells, device="cpu", out=tmp_path / "out")
        rec = records.read(done.path)
        assert rec["details"]["pool"]["chat_template"] is chat and rec["model"]["prompt"]["chat_template"] is chat
        assert ("<|system|>" in rec["details"]["pool"]["prompt_example"]) is chat
        keys.append((rec["run_id"], rec["details"]["pool"]["artifact"]))
    assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]  # another prompt: another cell and pool
