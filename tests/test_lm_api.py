"""The LM API against direct transformers calls."""

import math

import torch

from harness.interfaces import TaskContext
from harness.tasks.perplexity import Perplexity, windows


def test_generate_equals_direct_transformers_greedy(tiny_lm):
    prompts = [tiny_lm.encode(" The cost saim tulskited over the wal."), tiny_lm.encode(" Hina tulskited.")]
    got = tiny_lm.generate(prompts, max_new_tokens=6)
    for p, g in zip(prompts, got):
        ids = torch.tensor([p])
        ref = tiny_lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tiny_lm.tokenizer.pad_token_id,
        )
        assert g == ref[0, len(p) :].tolist()  # batched with left padding == one at a time


def test_loglikelihood_equals_manual_log_softmax(tiny_lm):
    ctx, cont = tiny_lm.encode(" The cost saim"), tiny_lm.encode(" tulskited over the wal.")
    (ll,) = tiny_lm.loglikelihood([(ctx, cont)])
    with torch.no_grad():
        logits = tiny_lm.model(input_ids=torch.tensor([ctx + cont])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    expected = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    assert math.isclose(ll.logprob, expected, rel_tol=1e-4)
    assert ll.n_tokens == len(cont)
    # batching with right padding changes nothing
    other = tiny_lm.loglikelihood([(ctx, cont), (ctx[:1], cont[:2])])
    assert math.isclose(other[0].logprob, ll.logprob, rel_tol=1e-5)


def test_telemetry_counts_forward_calls(tiny_lm):
    before = tiny_lm.telemetry["forward_calls"]
    tiny_lm.loglikelihood([([1, 5], [6, 7])])
    assert tiny_lm.telemetry["forward_calls"] == before + 1


def test_windows_score_every_token_once():
    for n, L, s in [(100, 16, 8), (100, 16, 15), (33, 50, 25), (1000, 128, 37), (10, 4, 2)]:
        ws = windows(n, L, s)
        assert sum(w[2] for w in ws) == n - 1
        assert all(e - b <= L and k < e - b for b, e, k in ws)  # >= 1 context token
        assert all(ws[i][1] + ws[i + 1][2] == ws[i + 1][1] for i in range(len(ws) - 1))


def test_perplexity_equals_direct_computation(tiny_lm):
    """Each window's NLL equals a plain forward pass over the same tokens, and perplexity is
    exp(total NLL / scored tokens)."""
    task = Perplexity(context_length=(64,), stride=32, n_tokens=256)
    res = task.run(TaskContext(lm=tiny_lm, seed=0))
    ids = task.text_ids(tiny_lm, 0)
    total = 0.0
    with torch.no_grad():
        for row in res.samples:
            b, e, k = row["begin"], row["end"], row["scored_tokens"]
            window = torch.tensor([ids[b:e]])
            logp = torch.log_softmax(tiny_lm.model(input_ids=window).logits[0].double(), -1)
            targets = window[0, -k:]
            nll = -logp[-k - 1 : -1].gather(1, targets[:, None]).sum().item()
            assert math.isclose(row["nll_sum"], nll, rel_tol=1e-4)
            total += nll
    assert res.metrics["nll@64"].n == 255
    assert math.isclose(res.metrics["perplexity@64"].value, math.exp(total / 255), rel_tol=1e-4)
    assert res.metrics["perplexity"].value == res.metrics["perplexity@64"].value


def test_sampled_generation_is_reproducible_for_a_seed(tiny_lm):
    prompts = [tiny_lm.encode(" The cost saim tulskited over the wal.")] * 3
    a = tiny_lm.generate(prompts, max_new_tokens=8, temperature=1.0, seed=3)
    b = tiny_lm.generate(prompts, max_new_tokens=8, temperature=1.0, seed=3)
    c = tiny_lm.generate(prompts, max_new_tokens=8, temperature=1.0, seed=4)
    assert a == b and a != c
    assert len({tuple(x) for x in a}) > 1  # rows of one batch are sampled independently
