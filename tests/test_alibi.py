"""ALiBi: slopes and biases against the paper's formulas; RoPE models are refused."""

import math

import pytest
import torch

from harness.errors import UserError
from harness.interfaces import MethodContext
from harness.attention import AttentionInputs
from harness.methods.rope.alibi import ALiBi, alibi_attend, alibi_slopes


@pytest.mark.fidelity(
    "alibi",
    reference="the paper's slopes 2^(−8k/H), interleaved for H not a power of two",
    tolerance="float32 assert_close defaults",
)
def test_slopes_follow_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([1 / 2**k for k in range(1, 9)]))
    # 12 heads: the 8 slopes of H=8, then slopes 1, 3, 5, 7 (0-based 0, 2, 4, 6) of H=16
    expected = [2 ** (-k) for k in range(1, 9)] + [2 ** (-0.5 * k) for k in (1, 3, 5, 7)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


@pytest.mark.fidelity("alibi", reference="slow loop: softmax(q·k/√d − m·(i − j))", tolerance="rel 1e-5, abs 1e-6")
def test_attend_equals_slow_loop():
    torch.manual_seed(1)
    H, L, d = 4, 9, 8
    q, k, v = (torch.randn(1, H, L, d, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(L)[None]
    a = AttentionInputs(
        q, k, v, pos, pos, torch.ones(L, L, dtype=torch.bool).tril()[None, None], 1 / math.sqrt(d), rope=None
    )
    got = alibi_attend(a)
    for h in range(H):
        m = 2 ** (-8 * (h + 1) / H)
        for i in range(L):
            logits = torch.stack([q[0, h, i] @ k[0, h, j] / math.sqrt(d) - m * (i - j) for j in range(i + 1)])
            expected = torch.softmax(logits, 0) @ v[0, h, : i + 1]
            torch.testing.assert_close(got[0, h, i], expected, rtol=1e-5, atol=1e-6)


def test_refuses_rope_models(tiny_lm):
    with pytest.raises(UserError, match="pretrained with ALiBi"):
        ALiBi().apply(tiny_lm, MethodContext())


def test_alibi_model_refused_without_the_alibi_method(tiny_model_with, tmp_path):
    from harness import runner

    model = tiny_model_with(**ALiBi.smoke_model_config)
    cells = runner.resolve(
        ["needle"], ["baseline"], model, {"context_length": "128", "depths": "1", "samples_per_depth": "1"}, {}, limit=1
    )
    with pytest.raises(UserError, match="pretrained with ALiBi"):
        runner.evaluate(cells, device="cpu", out=tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_zoo_recipe_trains_with_alibi_attention(monkeypatch):
    """The alibi recipe marks the config and every training forward goes through alibi_attend."""
    from harness import attention
    from harness.zoo.tokenizer import build_tokenizer
    from harness.zoo.train import Recipe, train

    calls = []
    real = attention.alibi_attend
    monkeypatch.setattr(attention, "alibi_attend", lambda a: calls.append(a.q.shape) or real(a))
    recipe = Recipe(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        context_length=64,
        position="alibi",
        steps=2,
        tokens_per_step=256,
        curriculum=(64,),
        warmup=1,
    )
    model, log = train(recipe, build_tokenizer())
    assert getattr(model.config, attention.ALIBI_CONFIG_FLAG) == "alibi"
    assert len(calls) == 2 * recipe.num_hidden_layers  # 2 steps x 2 layers, none bypassed
    assert "forward" not in vars(model.model.layers[0].self_attn)  # the override came off after training
