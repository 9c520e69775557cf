"""Co-LLM: the marginal-likelihood loss against a literal per-token transcription of the paper's
equation, the weak labels on a hand-computed example, collaborative greedy decoding at the two
extremes of η against each model's own greedy decoding, and the spec_acceptance record of a fitted
Co-LLM (a lossy method: a record, not a failed cell) whose deferral rate is recounted here."""

import math
from collections import Counter

import pytest
import torch

from harness import fitting, params, records, runner
from harness.interfaces import MethodContext
from harness.lm import LM
from harness.methods.spec.co_llm import CoLLM, hidden_and_logits, marginal_nll, weak_labels
from harness.models import load
from harness.tasks.spec_acceptance import SpecAcceptance

TEXT = " The cost saim tulskited over the wal. Hina tulskited a brel cost."


@pytest.mark.fidelity(
    "co_llm",
    reference="slow loop: −mean_t log[(1 − σ(s_t))·p_base(x_t) + σ(s_t)·p_asst(x_t)] in math",
    tolerance="rel 1e-9 (float64)",
)
def test_marginal_nll_equals_a_per_token_loop_over_the_equation():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64) * 4
    logp_base = torch.log_softmax(torch.randn(3, 5, 11, generator=g, dtype=torch.float64), -1)[..., 0]
    logp_asst = torch.log_softmax(torch.randn(3, 5, 11, generator=g, dtype=torch.float64), -1)[..., 2]
    total, n = 0.0, 0
    for i in range(3):
        for t in range(5):
            pi = 1 / (1 + math.exp(-float(s[i, t])))
            p = (1 - pi) * math.exp(float(logp_base[i, t])) + pi * math.exp(float(logp_asst[i, t]))
            total, n = total - math.log(p), n + 1
    assert float(marginal_nll(s, logp_base, logp_asst)) == pytest.approx(total / n, rel=1e-9)


def test_weak_labels_mark_tokens_only_the_assistant_gets_right():
    gold = torch.tensor([5, 6, 7, 8, 9])
    base = torch.tensor([5, 1, 7, 2, 4])  # right, wrong, right, wrong, wrong
    asst = torch.tensor([5, 6, 3, 8, 3])  # right, right, wrong, right, wrong
    assert weak_labels(base, asst, gold).tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]


def _unfitted(base: str, lm, eta: float) -> CoLLM:
    """Co-LLM with an untrained base and a random ω (no artifact): the decoding rule alone."""
    method = CoLLM(base=base, eta=eta)
    width = load(base, "cpu").model.config.hidden_size
    method._fitted = {"omega": torch.randn(width, generator=torch.Generator().manual_seed(1)), "eta": eta}
    return method


@pytest.mark.parametrize("eta,who", [(1.0, "base"), (0.0, "assistant")])
def test_extreme_thresholds_give_one_models_own_greedy_output(tiny_lm, tiny_model_with, eta, who):
    base = tiny_model_with(seed=7)
    prompts = [tiny_lm.encode(TEXT), tiny_lm.encode(" Hina tulskited.")]
    own = (LM(load(base, "cpu")) if who == "base" else tiny_lm).generate(prompts, max_new_tokens=12)
    method = _unfitted(base, tiny_lm, eta)
    before = Counter(tiny_lm.telemetry)
    with method.apply(tiny_lm, MethodContext()):
        out = tiny_lm.generate(prompts, max_new_tokens=12)
        assert method.check_effect(tiny_lm, MethodContext(), None) is None
    tel = Counter(tiny_lm.telemetry)
    tel.subtract(before)
    assert out == own
    assert tel["deferral_decisions"] == sum(map(len, out))
    assert tel["deferred_tokens"] == (tel["deferral_decisions"] if who == "assistant" else 0)
    assert tel["forward_calls"] == tel["deferred_tokens"]  # the assistant runs only when deferred to


def test_record_reports_deferral_rate_that_a_recount_confirms(tiny_model, tiny_model_with, tmp_path):
    base = tiny_model_with(seed=7)
    args = dict(CoLLM.smoke_args, base=base)
    fitting.fit("co_llm", tiny_model, None, {}, args, device="cpu", log=lambda m: None)
    loaded = load(tiny_model, "cpu")
    lm, method = LM(loaded), params.build(CoLLM, args, "co_llm")
    fitting.attach_artifact(method, lm, MethodContext(), loaded.sha256, tiny_model)
    fitted_base, omega = method.base_model(lm), method._fitted["omega"]
    task_args = {"prompts": "2", "max_new_tokens": "10", "warmups": "0", "repeats": "1", "temperatures": "0"}
    prompts = dict(SpecAcceptance(prompts=2).load_prompts(lm, 0, 2))
    pis = []  # η at the median π over the assistant's own continuations: some tokens go each way
    for ids in prompts.values():
        with torch.no_grad():
            h, _ = hidden_and_logits(fitted_base, torch.tensor([ids + lm.generate([ids], 10)[0]]))
        pis.append(torch.sigmoid(h[0, len(ids) - 1 : -1] @ omega))
    eta = float(torch.cat(pis).median())
    cells = runner.resolve(["spec_acceptance"], ["co_llm"], tiny_model, task_args, dict(args, eta=str(eta)), limit=2)
    path = runner.evaluate(cells, device="cpu", out=tmp_path)[0].path
    rec, rows = records.read(path), records.read_samples(path)
    deferred = decided = 0
    for row in rows:  # recount without the cache: π of every generated position from one forward
        out = row["prediction_ids"]
        with torch.no_grad():
            h, _ = hidden_and_logits(fitted_base, torch.tensor([prompts[row["prompt_id"]] + out]))
        n = int((torch.sigmoid(h[0, -len(out) - 1 : -1] @ omega) > eta).sum())
        assert row["telemetry"].get("deferred_tokens", 0) == n
        deferred, decided = deferred + n, decided + len(out)
    m = rec["metrics"]
    assert m["deferral_rate"]["value"] == pytest.approx(deferred / decided) and m["deferral_rate"]["n"] == decided
    assert 0 < m["deferral_rate"]["value"] < 1
    assert 0 <= m["greedy_agreement"]["value"] <= 1 and "lossless_greedy" in m
