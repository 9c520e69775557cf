"""LongRoPE: given factors against transformers' longrope, start tokens, and the fit stage."""

import json
import math

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from harness.cli import main
from harness.interfaces import MethodContext
from harness.methods.rope._common import RopeShape
from harness.methods.rope.longrope import LongRoPE
from tests.test_rope_methods import hf_config


@pytest.mark.fidelity(
    "longrope", reference="transformers ROPE_INIT_FUNCTIONS['longrope']", tolerance="float32 assert_close defaults"
)
def test_given_factors_equal_transformers_longrope():
    lam = [1.0 + 0.1 * i for i in range(32)]
    cfg = hf_config(
        {
            "rope_type": "longrope",
            "short_factor": [1.0] * 32,
            "long_factor": lam,
            "original_max_position_embeddings": 512,
        },
        max_pos=2048,
    )
    ref, att = ROPE_INIT_FUNCTIONS["longrope"](cfg, None, seq_len=2048)
    inv, scale = LongRoPE(rescale_factors=tuple(lam)).freq_fn(RopeShape(10000.0, 64, 512), 4.0)(2048)
    torch.testing.assert_close(inv, ref)
    assert scale == pytest.approx(att) == pytest.approx(math.sqrt(1 + math.log(4) / math.log(512)))


def test_wrong_number_of_factors_is_a_user_error(tiny_lm):
    from harness.errors import UserError

    with pytest.raises(UserError, match="frequencies"):
        LongRoPE(rescale_factors=(1.0, 2.0)).apply(tiny_lm, MethodContext(target_length=256))


def test_start_tokens_keep_original_rotation(tiny_lm):
    ids = torch.randint(30, 2000, (1, 160))  # longer than the original 128: the long factors
    lam = tuple(2.0 for _ in range(8))
    with torch.no_grad():
        plain = tiny_lm.model(input_ids=ids).logits
        with LongRoPE(rescale_factors=lam, start_tokens=160, attention_scale="none").apply(
            tiny_lm, MethodContext(target_length=256)
        ):
            all_kept = tiny_lm.model(input_ids=ids).logits
        with LongRoPE(rescale_factors=lam, start_tokens=10, attention_scale="none").apply(
            tiny_lm, MethodContext(target_length=256)
        ):
            some_kept = tiny_lm.model(input_ids=ids).logits
    torch.testing.assert_close(all_kept, plain, rtol=1e-5, atol=1e-5)  # every position below n̂
    torch.testing.assert_close(some_kept[:, :10], plain[:, :10], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(some_kept[:, 20:], plain[:, 20:], atol=1e-3)


def test_fit_then_eval_reuses_the_artifact(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "artifacts"))
    small = [
        "--method-arg",
        "population=6",
        "--method-arg",
        "parents=3",
        "--method-arg",
        "iterations=2",
        "--method-arg",
        "mutations=2",
        "--method-arg",
        "crossovers=2",
        "--method-arg",
        "search_windows=1",
    ]
    common = ["--model", tiny_model, "--device", "cpu"]
    evaluate = [
        "eval",
        "--task",
        "needle",
        "--task-arg",
        "context_length=256",
        "--task-arg",
        "depths=2",
        "--task-arg",
        "max_new_tokens=4",
        "--method",
        "longrope",
        "--limit",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path / "out"),
        *common,
        *small,
    ]
    assert main(evaluate) == 2
    assert "harness fit --method longrope" in capsys.readouterr().err
    assert (
        main(["fit", "--method", "longrope", "--task", "needle", "--task-arg", "context_length=256", *common, *small])
        == 0
    )
    out = capsys.readouterr().out
    payload = json.loads(out[: out.rindex("artifact:")])
    assert len(payload["rescale_factors"]) == 8 and payload["start_tokens"] >= 0
    lam = payload["rescale_factors"]
    assert all(1.0 <= a <= b <= 1.25 * 2 for a, b in zip(lam, lam[1:]))  # monotone, in range
    assert payload["perplexity"] <= payload["seed_perplexities"]["pi"] + 1e-9  # PI is a seed
    assert main(evaluate) == 0
    (record,) = (tmp_path / "out").rglob("*.json")
    rec = json.loads(record.read_text())
    key = out.strip().rsplit("artifact: ", 1)[1]
    assert rec["provenance"]["method_artifact"] == [key]
    assert rec["method"]["components"][0]["resolved"]["rescale_factors"] == [round(x, 4) for x in lam]


SHORT = [1.0 + 0.02 * i for i in range(32)]
LONG = [1.0 + 0.1 * i for i in range(32)]


@pytest.mark.fidelity(
    "longrope",
    reference="transformers ROPE_INIT_FUNCTIONS['longrope'] below and above the original context",
    tolerance="float32 assert_close defaults",
)
@pytest.mark.parametrize("seq_len", [1, 300, 512, 513, 2048])
def test_short_and_long_factors_switch_as_transformers_longrope(seq_len):
    """§3.3 / Phi-3: short factors while the sequence fits the original 512, long ones beyond."""
    cfg = hf_config(
        {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG, "original_max_position_embeddings": 512},
        max_pos=2048,
    )
    ref, att = ROPE_INIT_FUNCTIONS["longrope"](cfg, None, seq_len=seq_len)
    method = LongRoPE(rescale_factors=tuple(LONG), short_factors=tuple(SHORT))
    inv, scale = method.freq_fn(RopeShape(10000.0, 64, 512), 4.0)(seq_len)
    torch.testing.assert_close(inv, ref)
    assert scale == pytest.approx(att)


def test_short_factors_default_to_the_models_own_frequencies():
    inv, _ = LongRoPE(rescale_factors=tuple(LONG)).freq_fn(RopeShape(10000.0, 64, 512), 4.0)(512)
    torch.testing.assert_close(inv, 1.0 / 10000.0 ** (torch.arange(0, 64, 2).float() / 64))


@pytest.mark.fidelity(
    "longrope", reference="a transformers longrope model with the same weights (logits)", tolerance="rel 1e-4, abs 1e-4"
)
def test_rows_switch_like_a_transformers_longrope_model(tiny_lm):
    """The tiny model (original context 128) under longrope at s=2 gives the logits of the same
    weights loaded as a transformers `longrope` model, below and above 128 tokens."""
    from transformers import LlamaForCausalLM

    model = tiny_lm.model
    half = model.config.head_dim // 2 if getattr(model.config, "head_dim", None) else 8
    short, long = [1.0 + 0.05 * i for i in range(half)], [1.5 + 0.2 * i for i in range(half)]
    cfg = model.config.to_dict()
    cfg.update(
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": model.config.rope_parameters["rope_theta"],
            "short_factor": short,
            "long_factor": long,
            "original_max_position_embeddings": 128,
        },
    )
    ref = LlamaForCausalLM(type(model.config).from_dict(cfg)).eval()
    ref.load_state_dict(model.state_dict())
    method = LongRoPE(factor=2.0, rescale_factors=tuple(long), short_factors=tuple(short))
    for n in (100, 128, 129, 200):
        ids = torch.randint(30, 2000, (1, n), generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = ref(input_ids=ids).logits
            with method.apply(tiny_lm, MethodContext(target_length=256)):
                got = model(input_ids=ids).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
