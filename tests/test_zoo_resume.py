"""An interrupted zoo training run resumes from its checkpoint to exactly the weights of an
uninterrupted run (CPU, deterministic), and never resumes a run of another recipe or identity."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.zoo import train as train_mod
from harness.zoo.tokenizer import build_tokenizer
from harness.zoo.train import Recipe, train

RECIPE = Recipe(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    context_length=64,
    curriculum=(32, 64),
    steps=6,
    tokens_per_step=256,
    warmup=2,
    plain_frac=0.2,
    prose_frac=0.4,
    random_fact_frac=0.7,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(2)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _interrupted_after(step_stop, monkeypatch):
    real_save = train_mod._Run.save

    def save_then_stop(self, step):
        real_save(self, step)
        if step == step_stop:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C (or the machine went away) here

    monkeypatch.setattr(train_mod._Run, "save", save_then_stop)


def test_resumed_run_equals_uninterrupted_run(tok, tmp_path, monkeypatch):
    whole, whole_log = train(RECIPE, tok)
    ckpt = tmp_path / "checkpoint.pt"
    with monkeypatch.context() as m:
        _interrupted_after(3, m)
        with pytest.raises(KeyboardInterrupt):
            train(RECIPE, tok, checkpoint=ckpt, identity={"device": "cpu"}, checkpoint_every=2)
    assert ckpt.is_file() and torch.load(ckpt, weights_only=False)["step"] == 4
    heard = []
    resumed, log = train(
        RECIPE,
        tok,
        checkpoint=ckpt,
        identity={"device": "cpu"},
        checkpoint_every=2,
        notify=heard.append,
        log_path=tmp_path / "curve.jsonl",
    )
    assert heard == [f"resuming from {ckpt} at step 4"]
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda entries: [{k: v for k, v in e.items() if k != "elapsed_s"} for e in entries]  # noqa: E731
    assert drop(log) == drop(whole_log) and [e["step"] for e in log] == [0, 5]
    assert len((tmp_path / "curve.jsonl").read_text().splitlines()) == 2  # the curve before the stop is kept


def test_checkpoint_of_another_recipe_or_identity_is_not_resumed(tok, tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint.pt"
    with monkeypatch.context() as m:
        _interrupted_after(1, m)
        with pytest.raises(KeyboardInterrupt):
            train(RECIPE, tok, checkpoint=ckpt, identity={"teacher_sha256": "a"}, checkpoint_every=2)
    heard = []
    train(RECIPE, tok, checkpoint=ckpt, identity={"teacher_sha256": "b"}, checkpoint_every=2, notify=heard.append)
    other = dataclasses.replace(RECIPE, lr=1e-3)
    train(other, tok, checkpoint=ckpt, identity={"teacher_sha256": "b"}, checkpoint_every=2, notify=heard.append)
    assert heard == [f"checkpoints: {ckpt}"] * 2
