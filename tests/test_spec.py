"""Speculative decoding: the acceptance rule preserves the target distribution exactly, and at
temperature 0 the output equals the target's own greedy decoding."""

import pytest
import torch

from harness.interfaces import MethodContext
from harness.methods.spec._common import probs, verify_chain, verify_greedy
from harness.methods.spec.autoregressive import Autoregressive
from harness.methods.spec.sps import SpS


@pytest.mark.fidelity(
    "sps",
    reference="the target distribution p (Leviathan et al., Theorem 1) and the acceptance rate 1 − TV(p, q), Monte Carlo",
    tolerance="4σ (40k draws)",
)
def test_acceptance_rule_preserves_the_target_distribution():
    """One draft token over a 4-token vocabulary: the emitted first token must follow p exactly
    (Leviathan et al., Theorem 1). Monte Carlo with 40k draws, 4-sigma bounds."""
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.6, 0.2, 0.1]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    accepted = 0
    n = 40000
    for _ in range(n):
        x = int(torch.multinomial(q[0], 1, generator=gen))
        out, k = verify_chain(p, q, [x], gen)
        counts[out[0]] += 1
        accepted += k
    freq = counts / n
    sigma = (p[0] * (1 - p[0]) / n).sqrt()
    assert torch.all((freq - p[0]).abs() < 4 * sigma), (freq, p[0])
    alpha = torch.minimum(p[0], q[0]).sum()  # acceptance rate = 1 - TV(p, q)
    assert abs(accepted / n - float(alpha)) < 4 * (alpha * (1 - alpha) / n).sqrt()


def test_greedy_verification_accepts_the_matching_prefix():
    one_hot = lambda ids: torch.nn.functional.one_hot(torch.tensor(ids), 5).float()
    p, q = one_hot([1, 2, 3, 4]), one_hot([1, 2, 0])
    out, k = verify_chain(p, q, [1, 2, 0])
    assert (out, k) == ([1, 2, 3], 2)
    out, k = verify_chain(p, one_hot([1, 2, 3]), [1, 2, 3])
    assert (out, k) == ([1, 2, 3, 4], 3)  # all accepted: the bonus token


def test_greedy_fast_path_equals_speculative_sampling_on_one_hot_distributions():
    """verify_greedy (sps at temperature 0, no distributions built) gives what verify_chain gives
    with the one-hot p and q of temperature 0, on random logits and drafts of every prefix length."""
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        gamma = int(torch.randint(1, 6, (), generator=g))
        logits = torch.randn(gamma + 1, 7, generator=g)
        best = logits.argmax(-1).tolist()
        # drafts that agree with the target's argmax for a random prefix, then may differ
        agree = int(torch.randint(0, gamma + 1, (), generator=g))
        draft = best[:agree] + torch.randint(0, 7, (gamma - agree,), generator=g).tolist()
        q = torch.nn.functional.one_hot(torch.tensor(draft), 7).float()
        assert verify_greedy(logits, draft) == verify_chain(probs(logits, 0.0), q, draft, g)


@pytest.mark.fidelity(
    "sps",
    "autoregressive",
    reference="the target's own greedy decoding (LM.generate without a method)",
    tolerance="exact tokens",
)
@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_sps_greedy_equals_target_greedy(tiny_lm, tiny_model_with, gamma):
    draft = tiny_model_with(seed=7)  # a different random model as the draft
    prompts = [tiny_lm.encode(" The cost saim tulskited over the wal."), tiny_lm.encode(" Hina tulskited.")]
    plain = tiny_lm.generate(prompts, max_new_tokens=12)
    with Autoregressive().apply(tiny_lm, MethodContext()):
        auto = tiny_lm.generate(prompts, max_new_tokens=12)
    before = tiny_lm.telemetry["target_forwards"]
    with SpS(draft=draft, gamma=gamma).apply(tiny_lm, MethodContext()):
        spec = tiny_lm.generate(prompts, max_new_tokens=12)
    assert spec == plain == auto
    forwards = tiny_lm.telemetry["target_forwards"] - before
    assert forwards <= sum(len(x) for x in spec)  # never more target calls than tokens


def test_sps_with_itself_as_draft_accepts_everything(tiny_lm, tiny_model):
    before = dict(tiny_lm.telemetry)
    with SpS(draft=tiny_model, gamma=4).apply(tiny_lm, MethodContext()):
        out = tiny_lm.generate([tiny_lm.encode(" The cost saim tulskited.")], max_new_tokens=11)
    tel = tiny_lm.telemetry
    drafted = tel["draft_tokens"] - before.get("draft_tokens", 0)
    assert tel["accepted_draft_tokens"] - before.get("accepted_draft_tokens", 0) == drafted > 0
    forwards = tel["target_forwards"] - before.get("target_forwards", 0)
    assert forwards == 1 + 2 and len(out[0]) == 11  # prefill + two steps of 4 drafts + bonus
