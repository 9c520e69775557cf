"""DMC: the training form of the merge (every intermediate state, windowed) and the inference cache's
append-or-merge step against a literal transcription of the paper's recurrence on hand-built
sequences, and the engine's token-by-token cache against the cache-free (hard-decision) form."""

import pytest
import torch

from harness import registry
from harness.methods.kv._cache import LayerCache
from harness.methods.kv.dmc import DMC, merged_states

registry.load()


def literal_states(xs, alphas, omegas, window=None):
    """acc_i = α_i·acc_{i−1} + ω_i·x_i, c_i = α_i·c_{i−1} + ω_i, x̂_i = acc_i / c_i, one token at a
    time (window: the recurrence restarted so that at most `window` tokens contribute)."""
    out = []
    for i in range(len(xs)):
        start = 0 if window is None else max(0, i - window + 1)
        acc, c = [0.0] * len(xs[0]), 0.0
        for j in range(start, i + 1):
            a = alphas[j] if j > start else 0.0
            acc = [a * s + omegas[j] * x for s, x in zip(acc, xs[j])]
            c = a * c + omegas[j]
        out.append([s / c for s in acc])
    return torch.tensor(out)


@pytest.mark.fidelity(
    "dmc",
    reference="the paper's recurrence acc_i = α_i·acc_{i−1} + ω_i·x_i, one token at a time in Python",
    tolerance="rel 1e-5, abs 1e-6",
)
def test_training_form_is_the_running_weighted_average():
    gen = torch.Generator().manual_seed(0)
    n, d = 9, 3
    x = torch.randn(1, 1, n, d, generator=gen)
    alpha = torch.rand(1, 1, n, generator=gen) * 0.98 + 0.01
    omega = torch.rand(1, 1, n, generator=gen) + 0.1
    for window in (n, 3):
        got = merged_states(x, alpha.log(), omega, window)[0, 0]
        want = literal_states(x[0, 0].tolist(), alpha[0, 0].tolist(), omega[0, 0].tolist(), window)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.fidelity(
    "dmc",
    reference="the paper's append-or-merge rule by hand (weighted average into the last slot)",
    tolerance="float32 assert_close defaults",
)
def test_cache_step_appends_or_merges_as_the_paper_on_a_hand_built_sequence():
    gen = torch.Generator().manual_seed(1)
    n, d = 7, 2
    ks, vs = torch.randn(2, n, d, generator=gen), torch.randn(2, n, d, generator=gen)
    omega = torch.rand(2, n, generator=gen) + 0.1
    merge = torch.tensor([[0, 1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    lc = LayerCache(torch.zeros(1, 2, 1, d))
    for t in range(n):
        a = merge[:, t][None] & (lc.n > 0)
        DMC.step(lc, ks[:, t][None], vs[:, t][None], torch.full((1, 2, 1), t), a, omega[:, t][None])
    for h in range(2):  # the paper's rule, by hand: merge into the last slot with weight z, else append
        slots = []
        for t in range(n):
            if merge[h, t] and slots:
                k_last, v_last, z = slots[-1]
                w = float(omega[h, t])
                slots[-1] = ((z * k_last + w * ks[h, t]) / (z + w), (z * v_last + w * vs[h, t]) / (z + w), z + w)
            else:
                slots.append((ks[h, t], vs[h, t], float(omega[h, t])))
        valid = lc.valid[0, h]
        assert int(valid.sum()) == len(slots)
        torch.testing.assert_close(lc.k[0, h][valid], torch.stack([s[0] for s in slots]))
        torch.testing.assert_close(lc.v[0, h][valid], torch.stack([s[1] for s in slots]))


def test_engine_cache_equals_the_cache_free_hard_form(tiny_lm):
    from harness.attention import attention_override
    from harness.interfaces import MethodContext
    from harness.lm import KVRequest

    m = DMC(init_val=0.0)  # σ(k[-1]) decides: about half the tokens merge in an untrained model
    m._weights = {n: p.detach().clone() for n, p in tiny_lm.model.named_parameters()}
    ids = tiny_lm.encode(" the cat saw a dog , then the dog saw a cat and both left the room .")[:24]
    with m.apply(tiny_lm, MethodContext()) as driver:
        tiny_lm.kv_request = KVRequest(budget=0.5, decode_tokens=8)
        engine = driver.score_one(ids)
        tiny_lm.kv_request = KVRequest()
    assert 0 < m.merged < m.fed
    state = {"hard": True, "channel": 0.0, "d": []}
    with torch.no_grad(), attention_override(tiny_lm.model, m.training_attention(tiny_lm, state)):
        free = tiny_lm.model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(engine, free, rtol=1e-4, atol=1e-4)
