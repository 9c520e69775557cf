"""The fine-tuned long-context methods (longlora, pi_ft, yarn_ft): S²-Attn against a slow loop over
query-key pairs, the merged LoRA weights against the unmerged LoRA forward, and short fits through
`harness fit` that change the weights, are deterministic, and are reused by `harness eval`."""

import contextlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.interfaces import MethodContext
from harness.methods.rope._finetune import WEIGHTS_FILE
from harness.models import load
from harness.methods.rope.longlora import LongLoRA, lora_factors, lora_forwards, merged, s2_attend
from tests.test_longheads import inputs
from tests.test_position_remapping import rot1


def slow_s2(q, k, v, group, scaling):
    """q, k, v: [h, N, d]; heads in the second half see the sequence rolled by -group/2."""
    h, N, d = q.shape
    out = torch.zeros_like(v)
    for head in range(h):
        shift = group // 2 if head >= h // 2 else 0
        slot = [(i - shift) % N for i in range(N)]  # where token i sits after the roll
        for i in range(N):
            keys = [j for j in range(N) if slot[j] // group == slot[i] // group and slot[j] <= slot[i]]
            logits = torch.stack([rot1(q[head, i], i) @ rot1(k[head, j], j) for j in keys])
            p = torch.softmax(logits * scaling, 0)
            out[head, i] = sum(p[n] * v[head, j] for n, j in enumerate(keys))
    return out


@pytest.mark.fidelity(
    "longlora",
    reference="slow loop of S²-Attn (the second half of the heads shifted by half a group)",
    tolerance="rel 1e-7, abs 1e-9",
)
@pytest.mark.parametrize("h,group", [(4, 8), (2, 6)])
def test_s2_attention_equals_slow_loop(h, group):
    torch.manual_seed(0)
    N, d = 24, 8
    q, k, v = (torch.randn(h, N, d, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(N)
    got = s2_attend(inputs(q, k, v, pos, pos), group)[0]
    torch.testing.assert_close(got, slow_s2(q, k, v, group, 1 / math.sqrt(d)), rtol=1e-7, atol=1e-9)


def test_merged_lora_equals_unmerged_forward(tiny_lm):
    factors = lora_factors(tiny_lm, rank=4, seed=0)
    with torch.no_grad():
        for name, t in factors.items():
            if name.endswith("lora_B"):
                t.normal_(0, 0.05)  # B starts at zero; make the update visible
    ids = torch.randint(30, 2000, (2, 40))
    with torch.no_grad():
        plain = tiny_lm.model(input_ids=ids).logits
        with lora_forwards(tiny_lm, factors, scale=2.0):
            unmerged = tiny_lm.model(input_ids=ids).logits
        params = dict(tiny_lm.model.named_parameters())
        weights = merged(tiny_lm, factors, 2.0)
        saved = {n: params[n].clone() for n in weights}
        for n, w in weights.items():
            params[n].copy_(w)
        merged_out = tiny_lm.model(input_ids=ids).logits
        for n, w in saved.items():
            params[n].copy_(w)
    assert len(weights) == 4 * 2  # q/k/v/o in both layers of the tiny model
    assert not torch.allclose(unmerged, plain, atol=1e-3)
    torch.testing.assert_close(merged_out, unmerged, rtol=1e-4, atol=1e-5)


def _fit(method, model, tmp_path, extra=(), capsys=None):
    args = [
        "fit",
        "--method",
        method,
        "--model",
        model,
        "--device",
        "cpu",
        "--method-arg",
        "fit_length=256",
        "--method-arg",
        "steps=3",
        "--method-arg",
        "warmup=1",
        *extra,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    key = out.strip().rsplit("artifact: ", 1)[1]
    return key, json.loads(out[: out.rindex("artifact:")])


@pytest.mark.parametrize("method", ["longlora", "pi_ft", "yarn_ft"])
def test_fit_changes_weights_is_deterministic_and_eval_reuses_it(method, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "artifacts"))
    evaluate = [
        "eval",
        "--task",
        "needle",
        "--task-arg",
        "context_length=200",
        "--task-arg",
        "depths=1",
        "--task-arg",
        "max_new_tokens=3",
        "--method",
        method,
        "--limit",
        "1",
        "--no-progress",
        "--model",
        tiny_model,
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
        "--method-arg",
        "fit_length=256",
        "--method-arg",
        "steps=3",
        "--method-arg",
        "warmup=1",
    ]
    assert main(evaluate) == 2
    assert f"harness fit --method {method}" in capsys.readouterr().err
    key, payload = _fit(method, tiny_model, tmp_path, capsys=capsys)
    assert payload["scale"] == 2.0 and len(payload["loss_history"]) == 2
    trained = load_file(str(tmp_path / "artifacts" / key / WEIGHTS_FILE))
    own = dict(load(tiny_model, "cpu").model.named_parameters())  # the weights before the fit
    if method == "longlora":
        assert {n.rsplit(".", 2)[-2] for n in trained if ".lora_" in n} == {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert any(t.abs().max() > 0 for n, t in trained.items() if n.endswith("lora_B"))  # B left zero
        frozen = [n for n in own if n not in trained]
        assert frozen and all("mlp" in n or "proj" in n for n in frozen)
    changed = [n for n, t in trained.items() if n in own and not torch.equal(t, own[n])]
    assert changed and "model.embed_tokens.weight" in changed
    _fit(method, tiny_model, tmp_path, extra=["--overwrite"], capsys=capsys)  # same seed, same weights
    again = load_file(str(tmp_path / "artifacts" / key / WEIGHTS_FILE))
    assert all(torch.equal(again[n], trained[n]) for n in trained)
    assert main(evaluate) == 0
    (record,) = (tmp_path / "out").rglob("*.json")
    rec = json.loads(record.read_text())
    assert rec["method"]["name"] == method and rec["provenance"]["method_artifact"] == [key]
    assert rec["method"]["components"][0]["resolved"]["fit_length"] == 256


def test_s2_group_must_split_the_row():
    with pytest.raises(ValueError):
        LongLoRA(fit_length=250, group_size_ratio=0.25).group()
    assert LongLoRA().group() == 512


def test_scale_is_fixed_by_the_fit_length(tiny_lm):
    from harness.methods.rope.pi_ft import PIFinetuned

    m = PIFinetuned(fit_length=512)
    assert m.resolve(tiny_lm, MethodContext(target_length=4096))[1] == 4.0  # 512 / 128, not 4096 / 128


@pytest.mark.parametrize("full_attn", [False, True])
def test_full_attn_trains_under_the_attention_that_evaluation_uses(tiny_lm, full_attn):
    """`full_attn` (official `use_full_attn`): the training forward equals the evaluation forward
    (merged LoRA, full attention, PI positions); under S²-Attn (the default) a 512-token row split
    into groups of 128 attends differently."""
    m = LongLoRA(fit_length=512, full_attn=full_attn)
    ctx = MethodContext(target_length=512)
    shape, s = m.resolve(tiny_lm, ctx)
    trainable, patches = m.training_setup(tiny_lm, ctx, shape, s)
    with torch.no_grad():
        for name, t in trainable.items():
            if name.endswith("lora_B"):
                t.normal_(0, 0.05)  # B starts at zero; make the update visible
    ids = torch.randint(30, 2000, (1, 512))
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for p in patches():
            stack.enter_context(p)
        training = tiny_lm.model(input_ids=ids).logits
    m._trained = {name: t.detach().clone() for name, t in trainable.items()}
    with torch.no_grad(), m.apply(tiny_lm, ctx):
        evaluation = tiny_lm.model(input_ids=ids).logits
    assert torch.allclose(training, evaluation, rtol=1e-4, atol=1e-4) == full_attn


def test_low_rank_false_trains_every_weight_without_lora(tiny_lm):
    """`low_rank=false` (official `low_rank_training=False`): every model weight trains, no LoRA
    factor exists, and S²-Attn still shapes training (full_attn stays off)."""
    ctx = MethodContext(target_length=512)
    full = LongLoRA(fit_length=512, low_rank=False)
    trainable, patches = full.training_setup(tiny_lm, ctx, *full.resolve(tiny_lm, ctx))
    assert set(trainable) == {n for n, _ in tiny_lm.model.named_parameters()}
    assert len(patches()) == 2  # PI RoPE and S²-Attn, no LoRA forwards
    lora = LongLoRA(fit_length=512)
    trainable, patches = lora.training_setup(tiny_lm, ctx, *lora.resolve(tiny_lm, ctx))
    assert any(".lora_A" in n for n in trainable) and not any(".mlp." in n for n in trainable)
    assert len(patches()) == 3
