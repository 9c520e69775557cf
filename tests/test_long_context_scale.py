"""Long context at scale: chunked prefill computes what one forward over the whole prompt computes
(for the plain model and for every method that overrides attention or depends on the length),
logits only where they are used, the memory check before any work, auto batch size, the
out-of-memory back-off and the extrapolation warning."""

import math

import pytest
import torch

from harness import budget, runner
from harness.errors import UserError
from harness.interfaces import MethodContext
from harness.lm import LM
from harness.models import load
from harness.registry import method

# one of each mechanism: plain, a length-dependent rotation, the three attention overrides (static
# RoPE scalings such as yarn rotate exactly as the baseline's rotary module does)
METHODS = ["baseline", "dynamic_ntk", "selfextend", "dca", "longheads"]


@pytest.fixture(scope="module")
def loaded():
    """The zoo model (trained at 512 tokens): a random-init model attends almost uniformly, so a
    wrong rotation of earlier chunks would barely change its outputs."""
    return load("zoo:tiny-llama", "cpu")


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(30, 2000, (n,), generator=g).tolist() for n in lengths]


def direct_logits(model, ids):
    """One forward over the whole prompt, no cache: the reference chunked prefill must equal."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double()


@pytest.mark.parametrize("name", METHODS)
def test_chunked_loglikelihood_equals_one_forward(loaded, name):
    seqs = prompts([1100, 700, 40])
    reqs = [(s[:-25], s[-25:]) for s in seqs]
    m = method(name)()
    got = {}
    for chunk, batch in ((256, 1), (256, 3), (0, 3)):  # 5 chunks; right padding in batches of 3
        lm = LM(loaded, batch_size=batch, prefill_chunk=chunk)
        with m.apply(lm, MethodContext(target_length=1100)):
            got[chunk, batch] = lm.loglikelihood(reqs)
            if batch == 1:  # one row: against transformers' own forward over the whole sequence
                for (ctx, cont), ll in zip(reqs, got[chunk, batch]):
                    logp = torch.log_softmax(direct_logits(lm.model, ctx + cont), -1)
                    expected = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
                    assert math.isclose(ll.logprob, expected, rel_tol=1e-4), name
                    assert ll.greedy == all(int(logp[len(ctx) - 1 + i].argmax()) == t for i, t in enumerate(cont))
        lm.close()
    for a, b in zip(got[256, 3], got[0, 3]):  # a padded batch: chunks change nothing
        assert math.isclose(a.logprob, b.logprob, rel_tol=1e-4) and a.greedy == b.greedy, name


@pytest.mark.parametrize("name", METHODS)
def test_chunked_generation_equals_one_forward_prefill(loaded, name):
    seqs = prompts([1040, 700, 97], seed=1)
    m = method(name)()
    outs = {}
    for chunk in (0, 208):
        lm = LM(loaded, batch_size=3, prefill_chunk=chunk)  # left padding, prefill of 5 chunks
        with m.apply(lm, MethodContext(target_length=1050)):
            outs[chunk] = lm.generate(seqs, 6)
            if chunk:
                assert lm.telemetry["forward_calls"] == 5 + 6  # 5 prefill chunks, then 6 steps
        lm.close()
    assert outs[208] == outs[0], name


def test_logits_only_where_scored(loaded):
    """The LM head sees the scored positions only, a chunk at a time, never the whole prompt."""
    lm = LM(loaded, batch_size=2, prefill_chunk=64)
    rows = []
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda mod, i, o: rows.append(i[0].shape[1]))
    seq = prompts([450])[0]
    lm.loglikelihood([(seq[:-10], seq[-10:])])
    hook.remove()
    lm.close()
    assert sum(rows) <= 10 + 7 and max(rows) <= 10  # 7 chunks without a scored position keep 1


def test_generation_keeps_one_logit_row_per_chunk(loaded):
    lm = LM(loaded, batch_size=1, prefill_chunk=64)
    rows = []
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda mod, i, o: rows.append(i[0].shape[1]))
    lm.generate(prompts([400]), 3)
    hook.remove()
    lm.close()
    assert max(rows) == 1


def test_oom_splits_the_batch_and_keeps_the_order(loaded, monkeypatch):
    seqs = prompts([50, 60, 70, 80], seed=2)
    lm = LM(loaded, batch_size=4)
    expected = lm.generate(seqs, 4)
    real = lm._generate_batch

    def tight(ids, mask, *args):
        if ids.shape[0] > 1:
            raise torch.OutOfMemoryError("simulated")
        return real(ids, mask, *args)

    with lm.batch_hooks(generate_batch=tight):
        assert lm.generate(seqs, 4) == expected
    assert lm.batch_size == 1 and lm.telemetry["oom_backoffs"] == 3
    lm.close()


def test_memory_check_stops_before_any_work(loaded):
    lm = LM(loaded, batch_size=8)
    with pytest.raises(UserError, match=r"needs about .* GiB.*memory cap is"):
        budget.plan(lm, [(100_000, 16)], "auto", cap_bytes=2**20)
    assert lm.telemetry["forward_calls"] == 0  # no warm-up ran
    with pytest.raises(UserError, match="--batch-size 8 needs about"):
        budget.plan(lm, [(3000, 16)] * 8, 8, cap_bytes=int(1.5 * budget.sequence_bytes(lm.model.config, 3016, 512, 4)))
    lm.close()


def test_estimate_grows_linearly_with_context():
    """The per-sequence estimate is linear in the context (no context x context term)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        intermediate_size=14336,
        vocab_size=128256,
    )
    sizes = [budget.sequence_bytes(cfg, n, 2048, 2) for n in (32768, 65536, 131072)]
    assert sizes[2] - sizes[1] == 2 * (sizes[1] - sizes[0])
    kv = 2 * 32 * 8 * 128 * 131072 * 2  # Llama-3-8B's KV cache at 128k in bf16: 16 GiB
    assert kv < sizes[2] < 1.5 * kv


def test_auto_batch_short_prompts_keep_the_fixed_default(loaded):
    lm = LM(loaded, batch_size=1)
    plan = budget.plan(lm, [(100, 8)] * 20, "auto", None)
    assert plan.batch_size == budget.SHORT_BATCH and plan.estimated_seconds is None
    assert lm.telemetry["forward_calls"] == 0  # nothing measured for short prompts
    lm.close()


def test_auto_batch_long_prompts_measure_and_estimate(loaded, monkeypatch):
    monkeypatch.setattr(budget, "LONG_PROMPT", 64)  # the tiny model's prompts count as long
    lm = LM(loaded, batch_size=1, prefill_chunk=64)
    plan = budget.plan(lm, [(300, 8)] * 3, "auto", None)
    assert plan.batch_size in (1, 2) and "tokens/s" in plan.batch_rule  # candidates up to the 3 prompts
    assert plan.estimated_seconds > 0 and plan.tokens == 3 * 308
    lm.close()


def test_auto_batch_of_a_resumed_cell_is_the_earlier_attempts(loaded, monkeypatch):
    """A resumed cell replays batches by their prompts: re-measuring could pick another size, and
    none of the journaled batches would be found again."""
    monkeypatch.setattr(budget, "LONG_PROMPT", 64)
    lm = LM(loaded, batch_size=1, prefill_chunk=64)
    for resumed in (1, 3):
        plan = budget.plan(lm, [(300, 8)] * 4, "auto", None, resumed=resumed)
        assert plan.batch_size == resumed and "resumes" in plan.batch_rule
    assert budget.plan(lm, [(300, 8)] * 4, 2, None, resumed=3).batch_size == 2  # a size asked for stays
    lm.close()


def test_extrapolation_is_warned_and_recorded(tiny_model, tmp_path):
    logs = []
    cells = runner.resolve(
        ["needle"],
        ["baseline"],
        tiny_model,
        {"context_length": "600", "depths": "1", "samples_per_depth": "1", "max_new_tokens": "2"},
        {},
        limit=1,
    )
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path, log=logs.append, prefill_chunk=128)
    assert any("4.7x the model's trained length (128" in line for line in logs)  # 600 / 128
    assert out.record["task"]["resolved"] == {"context_over_trained_length": 4.69, "trained_length": 128}
    prov = out.record["provenance"]
    assert prov["prefill_chunk"] == 128 and prov["batch_size"] == 8 and prov["memory_cap_bytes"] > 0


def test_cli_memory_cap_too_small_exits_2_without_a_record(tiny_model, tmp_path, capsys):
    from harness.cli import main

    code = main(
        [
            "eval",
            "--task",
            "needle",
            "--task-arg",
            "context_length=200",
            "--model",
            tiny_model,
            "--memory-cap",
            "0.000001",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "memory cap" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--batch-size", "0"),
        ("--batch-size", "x"),
        ("--prefill-chunk", "-1"),
        ("--memory-cap", "nan"),
        ("--memory-cap", "0"),
    ],
)
def test_cli_bad_budget_flags_exit_2(flag, value, capsys):
    from harness.cli import main

    assert main(["eval", "--task", "needle", flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1
