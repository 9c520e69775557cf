"""Model families beyond Llama: methods a model cannot take are refused with one clear reason (exit 2,
a "refused" sweep outcome), never a traceback; learned absolute positions (gpt2) get a clear error
for a prompt longer than their table instead of an IndexError."""

import json

import pytest
import torch

from harness import compat, models, registry
from harness.attention import attention_override
from harness.cli import main
from harness.errors import Refused
from harness.lm import LM

from tests.test_cli import run
from tests.tiny_families import make_family

NEEDLE = {"context_length": "160", "depths": "1", "samples_per_depth": "1", "max_new_tokens": "2"}
REFUSED = {  # family -> (methods refused, words of the reason)
    "gpt2": ({"yarn", "selfextend", "dca"}, "learned absolute position embeddings (128 positions)"),
    "opt": ({"yarn", "selfextend", "dca"}, "learned absolute position embeddings (128 positions)"),
    "phi3": (set(), ""),  # fused qkv_proj: read by harness.projections (tests/test_attention_families.py)
    "gpt_neox": (set(), ""),  # per-head query_key_value, partial rotary
    "phi": (set(), ""),  # dense output, partial rotary
    "gemma2": ({"selfextend", "dca"}, "sliding-window attention (window 64)"),
    "mistral-sw": ({"selfextend", "dca"}, "sliding-window attention (window 64)"),
    "gemma3_text": ({"yarn", "selfextend", "dca"}, "keeps one frequency table per layer type"),
    "cohere": ({"yarn", "selfextend", "dca"}, "rotates interleaved dimension pairs"),
    "qwen2": (set(), ""),
    "mistral": (set(), ""),
}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    made = {}

    def get(name: str) -> str:
        if name not in made:
            made[name] = make_family(tmp_path_factory.mktemp(name), name)
        return made[name]

    return get


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_name_the_reason(family, name):
    model = models.load(family(name), "cpu").model
    refused, words = REFUSED[name]
    for method in ("yarn", "selfextend", "dca", "longheads", "baseline"):
        reason = compat.refusal(model, registry.method(method))
        assert (reason is not None) == (method in refused or (method == "longheads" and bool(refused & {"dca"}))), (
            method,
            reason,
        )
        if reason:
            assert words in reason and reason.startswith(f"method {method} refuses ")


def test_attention_override_refuses_what_it_cannot_compute(family):
    """Before: a ValueError traceback (or a silently different model for sliding windows)."""
    for name in ("gpt2", "gemma2"):
        with pytest.raises(Refused, match="no RoPE|sliding-window attention"):
            with attention_override(models.load(family(name), "cpu").model, lambda a: a.q):
                pass


@pytest.mark.parametrize(
    "name,method", [("gpt2", "selfextend"), ("gpt2", "yarn"), ("opt", "dca"), ("cohere", "dca"), ("gemma2", "dca")]
)
def test_eval_refuses_with_one_line_and_exit_2(capsys, family, tmp_path, name, method):
    args = ["eval", "--model", family(name), "--task", "needle", "--method", method, "--out", str(tmp_path)]
    args += ["--no-progress", "--device", "cpu"] + [x for k, v in NEEDLE.items() for x in ("--task-arg", f"{k}={v}")]
    code, _, err = run(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"method {method} refuses" in err
    assert not list(tmp_path.rglob("*.json"))


def test_eval_checks_every_cell_before_running_any(capsys, family, tmp_path):
    args = ["eval", "--model", family("gpt2"), "--task", "needle", "--method", "baseline", "--method", "yarn"]
    args += ["--out", str(tmp_path), "--no-progress", "--device", "cpu", "--task-arg", "context_length=100"]
    args += [x for k, v in NEEDLE.items() if k != "context_length" for x in ("--task-arg", f"{k}={v}")]
    code, _, err = run(capsys, *args)
    assert code == 2 and "method yarn refuses" in err
    assert not list(tmp_path.rglob("*.json")), "the baseline cell must not have run"


def test_prompt_longer_than_learned_positions_is_exit_2_not_index_error(capsys, family, tmp_path):
    args = ["eval", "--model", family("gpt2"), "--task", "needle", "--out", str(tmp_path), "--no-progress"]
    args += ["--device", "cpu"] + [x for k, v in NEEDLE.items() for x in ("--task-arg", f"{k}={v}")]
    code, _, err = run(capsys, *args)
    assert code == 2 and "learned absolute position embeddings for 128 positions" in err
    assert "160 tokens does not fit" in err and len(err.strip().splitlines()) == 1
    # a method's or task's own forward past the table: the LM refuses it before the embedding does
    lm = LM(models.load(family("gpt2"), "cpu"), batch_size=1)
    with pytest.raises(Refused, match="a sequence of 130 tokens does not fit"):
        lm.generate([[5] * 120], max_new_tokens=10)
    with pytest.raises(Refused, match="does not fit"):
        lm.loglikelihood([([5] * 100, [6] * 40)])
    assert lm.generate([[5] * 100], max_new_tokens=4) is not None  # inside the table: runs
    with torch.no_grad():
        lm.model(torch.tensor([[5] * 128]))


def test_sweep_records_refused_cells_and_goes_on(family, tmp_path, capsys):
    grid = {
        "models": [family("gpt2")],
        "runs": [{"tasks": ["needle"], "methods": ["baseline", "selfextend"], "task_args": dict(NEEDLE)}],
    }
    grid["runs"][0]["task_args"]["context_length"] = "100"
    path, summary = tmp_path / "grid.json", tmp_path / "summary.json"
    path.write_text(json.dumps(grid))
    args = ["sweep", str(path), "--out", str(tmp_path / "out"), "--device", "cpu", "--summary", str(summary)]
    assert main(args) == 0  # a refusal is not a failure
    s = json.loads(summary.read_text())
    assert (s["done"], s["refused"], s["failed"]) == (1, 1, 0)
    (r,) = s["refusals"]
    assert "selfextend" in r["cell"] and "learned absolute position embeddings" in r["reason"]
    assert "1 refused" in capsys.readouterr().out


def test_list_methods_with_a_model_says_which_apply(capsys, family):
    code, out, _ = run(capsys, "list", "methods", "--json", "--model", family("gpt2"))
    by_name = {e["name"]: e for e in json.loads(out)}
    assert code == 0 and by_name["baseline"]["applies"] is True and by_name["yarn"]["applies"] is False
    assert "learned absolute position embeddings" in by_name["selfextend"]["refusal"]
    assert "applies" not in by_name["math_shepherd"] or by_name["math_shepherd"]["applies"] is None
    code, out, _ = run(capsys, "list", "methods", "--model", family("qwen2"))
    assert code == 0 and "refused:" not in out
    code, out, _ = run(capsys, "list", "methods", "--model", family("cohere"))  # its rotary runs on the meta device
    assert code == 0 and "refused: method yarn refuses CohereForCausalLM: " in out
    code, _, err = run(capsys, "list", "tasks", "--model", family("qwen2"))
    assert code == 2 and "--model goes with `harness list methods`" in err
    code, _, err = run(capsys, "list", "methods", "--model", "hf:nobody/not-cached-here")
    assert code == 2 and "not in the local Hugging Face cache" in err


def test_grid_loading_flags_must_be_booleans(tmp_path, capsys):
    path = tmp_path / "g.json"
    path.write_text(
        json.dumps({"loading": {"trust_remote_code": "yes"}, "runs": [{"tasks": ["needle"], "methods": ["baseline"]}]})
    )
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "trust_remote_code must be true or false" in capsys.readouterr().err
