"""The committed zoo models: offline loading, sha256 verification, the measured figures hold."""

import json
import shutil

import pytest
import torch

from harness import models
from harness.errors import UserError
from harness.zoo import registry as zoo

NAMES = ["tiny-llama", "tiny-llama-draft", "tiny-llama-alibi"]


def test_zoo_lists_all_models():
    assert set(NAMES) <= set(zoo.names())


@pytest.mark.parametrize("name", NAMES)
def test_card_and_files(name):
    card = zoo.card(name)
    folder = zoo.ZOO_DIR / name
    for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "loss_curve.jsonl"):
        assert (folder / f).is_file(), f
    assert models.file_sha256(folder / "model.safetensors") == card["sha256"]
    for key in ("architecture", "parameters", "context_length", "recipe", "final", "evaluation", "sha256"):
        assert key in card
    assert card["sha256"] in (folder / "README.md").read_text()


def test_all_zoo_weights_within_48_mb():
    total = sum((zoo.ZOO_DIR / n / "model.safetensors").stat().st_size for n in zoo.names())
    assert total <= 48 * 1024 * 1024


@pytest.mark.parametrize("name", NAMES)
def test_loads_offline_with_auto_classes(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo.ZOO_DIR / name)
    text = " Remember the special magic number for mootsket: 6298129."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    loaded = models.load(f"zoo:{name}", "cpu")
    assert loaded.zoo and loaded.sha256 == zoo.card(name)["sha256"]
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_sha256_mismatch_fails_clearly(tmp_path, monkeypatch):
    copy = tmp_path / "tiny-llama-draft"
    shutil.copytree(zoo.ZOO_DIR / "tiny-llama-draft", copy)
    card = json.loads((copy / "card.json").read_text())
    card["sha256"] = "0" * 64
    (copy / "card.json").write_text(json.dumps(card))
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    with pytest.raises(UserError, match="do not match"):
        models.load("zoo:tiny-llama-draft", "cpu")


def test_needle_at_training_length():
    """20 samples at 512 tokens through the needle task with its default template."""
    from harness.interfaces import TaskContext
    from harness.lm import LM
    from harness.tasks.needle import Needle

    lm = LM(models.load("zoo:tiny-llama", "cpu"))
    res = Needle(context_length=(512,)).run(TaskContext(lm=lm, limit=20))
    assert res.metrics["accuracy"].n == 20
    assert res.metrics["accuracy"].value >= 0.9


def test_alibi_model_retrieves_under_the_alibi_method():
    """tiny-llama-alibi retrieves at 512 tokens through the alibi method, and its card says how it
    was trained."""
    from harness.interfaces import MethodContext, TaskContext
    from harness.lm import LM
    from harness.methods.rope.alibi import ALiBi
    from harness.tasks.needle import Needle

    card = zoo.card("tiny-llama-alibi")
    assert card["position_encoding"] == "alibi" and card["train_device"] and card["training_seconds"] > 0
    lm = LM(models.load("zoo:tiny-llama-alibi", "cpu"))
    with ALiBi().apply(lm, MethodContext()):
        res = Needle(context_length=(512,)).run(TaskContext(lm=lm, limit=20))
    assert res.metrics["accuracy"].value >= 0.9


def test_draft_agreement_matches_card():
    from harness.zoo.build import draft_agreement

    draft = models.load("zoo:tiny-llama-draft", "cpu")
    target = models.load("zoo:tiny-llama", "cpu")
    card = zoo.card("tiny-llama-draft")["evaluation"]["greedy_agreement_with_target"]
    got = draft_agreement(draft.model, target.model, draft.tokenizer)  # the card's protocol
    assert abs(got - card) <= 0.01


def test_parallel_batches_are_seeded_per_step():
    """data_workers > 0 builds step s from its own seed (below the evaluation seeds), so the pool
    gives the same batches as building each step alone, in order."""
    from harness.synthetic import EVAL_SEED_BASE
    from harness.zoo import train as T
    from harness.zoo.tokenizer import build_tokenizer

    recipe = T.Recipe(steps=3, tokens_per_step=256, curriculum=(64,), data_workers=2)
    tok = build_tokenizer()
    with T._batches(recipe, tok, T._Run(recipe, None, None, None, {}, 100)) as batches:
        pooled = list(batches)
    T._WORKER_TOKENIZER = tok
    alone = [T._one_batch((recipe, s)) for s in range(3)]
    assert len(pooled) == 3
    for (ids, mask), (ids2, mask2) in zip(pooled, alone):
        assert torch.equal(ids, torch.from_numpy(ids2)) and torch.equal(mask, torch.from_numpy(mask2))
    assert not torch.equal(pooled[0][0], pooled[1][0])
    assert all(T.step_seed(recipe, s) < EVAL_SEED_BASE for s in range(10_000))
