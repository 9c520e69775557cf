"""The models a method names besides the LM (a speculative draft, Co-LLM's base, a PRM backbone)
are part of what ran: their weights' sha256 enter the run id, the record and the configuration a
report or the leaderboard groups by. Before, a retrained `zoo:tiny-llama-draft` kept every spec
record's run id, so a sweep skipped those cells as finished and kept the old draft's numbers."""

import shutil

import pytest

from harness import models, runner, seeds
from harness.zoo import registry as zoo
from harness.errors import UserError

SPEC = {"max_new_tokens": "4", "prompts": "1"}


def _locate(method, method_args, tmp_path, model="zoo:tiny-llama", task="spec_acceptance", task_args=SPEC):
    (cell,) = runner.resolve([task], [method], model, task_args, method_args)
    return runner.locate(cell, tmp_path)


def test_a_draft_s_weights_key_the_run_and_the_record(tmp_path):
    config, rid, _ = _locate("sps", {}, tmp_path)
    assert config["method"]["models"] == {"sps.draft": models.identity("zoo:tiny-llama-draft")[1]}
    # the same draft copied to a folder: the same weights, so only the params' spelling differs
    copy = tmp_path / "draft"
    shutil.copytree(zoo.verified_folder("tiny-llama-draft")[0], copy)
    same, rid_copy, _ = _locate("sps", {"draft": str(copy)}, tmp_path)
    assert same["method"]["models"]["sps.draft"] == config["method"]["models"]["sps.draft"]
    # other weights under another name: another run id and another configuration
    other, rid_other, _ = _locate("sps", {"draft": "zoo:tiny-llama"}, tmp_path)
    assert other["method"]["models"]["sps.draft"] != config["method"]["models"]["sps.draft"]
    assert len({rid, rid_copy, rid_other}) == 3


def test_every_draft_of_specinfer_and_co_llm_s_base_are_keyed(tmp_path):
    config, _, _ = _locate("specinfer", {"drafts": "zoo:tiny-llama-draft,zoo:tiny-llama"}, tmp_path)
    draft, target = (models.identity(f"zoo:{n}")[1] for n in ("tiny-llama-draft", "tiny-llama"))
    assert config["method"]["models"] == {"specinfer.drafts[0]": draft, "specinfer.drafts[1]": target}
    config, _, _ = _locate("co_llm", {}, tmp_path)
    assert config["method"]["models"] == {"co_llm.base": draft}


def test_methods_that_name_no_model_keep_their_run_ids(tmp_path):
    config, _, _ = _locate("yarn", {}, tmp_path, task="needle", task_args={"context_length": "512"})
    assert "models" not in config["method"]
    config, _, _ = _locate("math_shepherd", {}, tmp_path, model="none", task="math_prm_bon", task_args={})
    assert "models" not in config["method"]  # no backbone: the from-scratch StepNet


def test_an_unknown_draft_is_refused_before_any_model_loads(tmp_path):
    with pytest.raises(UserError):
        _locate("sps", {"draft": str(tmp_path / "missing")}, tmp_path)


def test_records_with_other_draft_weights_are_other_configurations():
    def rec(sha):
        return {
            "task": {"name": "spec_acceptance", "version": "2", "params": {}},
            "method": {
                "name": "sps",
                "params": {"sps": {"draft": "zoo:tiny-llama-draft"}},
                "models": {"sps.draft": sha},
            },
            "model": {"id": "zoo:tiny-llama", "sha256": "t"},
            "limit": 8,
        }

    assert len(seeds.group([rec("a"), rec("a"), rec("b")])) == 2
    from harness.leaderboard import loader

    assert loader.config_key(rec("a")) != loader.config_key(rec("b"))
