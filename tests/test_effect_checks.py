"""No silent no-ops: a method whose patch never ran fails its cell and writes no record."""

import contextlib

import pytest

from harness import runner
from harness.errors import NoEffect

CASES = [("pi", {"factor": "4"}), ("selfextend", {}), ("dca", {})]


@pytest.mark.parametrize("method,args", CASES)
def test_disabled_patch_fails_the_cell(method, args, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(runner.registry.method(method), "apply", lambda self, lm, ctx: contextlib.nullcontext())
    cells = runner.resolve(
        ["needle"],
        [method],
        tiny_model,
        {"context_length": "128", "depths": "1", "samples_per_depth": "1"},
        args,
        limit=1,
    )
    with pytest.raises(NoEffect, match="never called"):
        runner.evaluate(cells, device="cpu", out=tmp_path)
    assert not list(tmp_path.rglob("*.json")), "a failed effect check must not leave a record"


def test_scale_that_changes_nothing_is_caught(tiny_model, tmp_path, monkeypatch):
    """A RoPE method whose frequencies come out unchanged at a scale above 1 did nothing."""
    from harness.methods.rope import pi
    from harness.methods.rope._common import inv_freq

    monkeypatch.setattr(pi.PI, "freq_fn", lambda self, shape, s: lambda n: (inv_freq(shape.base, shape.dim), 1.0))
    cells = runner.resolve(
        ["needle"],
        ["pi"],
        tiny_model,
        {"context_length": "128", "depths": "1", "samples_per_depth": "1"},
        {"factor": "4"},
        limit=1,
    )
    with pytest.raises(NoEffect, match="unchanged"):
        runner.evaluate(cells, device="cpu", out=tmp_path)


def test_effect_failure_exits_1(tiny_model, tmp_path, monkeypatch, capsys):
    from harness import cli
    from harness.methods.rope import pi

    monkeypatch.setattr(pi.PI, "apply", lambda self, lm, ctx: contextlib.nullcontext())
    code = cli.main(
        [
            "eval",
            "--task",
            "needle",
            "--task-arg",
            "context_length=128",
            "--task-arg",
            "depths=1",
            "--task-arg",
            "samples_per_depth=1",
            "--method",
            "pi",
            "--method-arg",
            "factor=4",
            "--model",
            tiny_model,
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "patched rotary embedding was never called" in capsys.readouterr().err
