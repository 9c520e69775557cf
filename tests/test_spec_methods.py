"""Every speculative method against the target itself: greedy output equal token for token to the
target's own greedy decoding, sampled next-token histograms not distinguishable from the target's
exact distribution (with a broken acceptance rule as the control that the test has power), and the
spec_acceptance task's record, its failure on a violation and its prompt-file errors."""

from types import SimpleNamespace

import pytest
import torch

from harness import records, runner
from harness.errors import UserError
from harness.interfaces import MethodContext
from harness.methods.spec import _tree, sps as sps_module
from harness.methods.spec._eagle import EagleHead
from harness.methods.spec.distillspec import DistillSpec
from harness.methods.spec.eagle import Eagle
from harness.methods.spec.eagle2 import Eagle2
from harness.methods.spec.hf_assisted import HFAssisted
from harness.methods.spec.rest import REST
from harness.methods.spec.specinfer import SpecInfer
from harness.methods.spec.sps import SpS
from harness.models import load
from harness.tasks.spec_acceptance import NotLossless, SpecAcceptance, read_prompts

TEXT = " The cost saim tulskited over the wal. Hina tulskited a brel cost."


@pytest.fixture(scope="module")
def methods(tiny_lm, tiny_model_with, tmp_path_factory):
    """Each method, configured on the tiny test model with a different random model as its draft."""
    draft = tiny_model_with(seed=7)
    head = EagleHead(tiny_lm.model.config)  # a random head: drafts are poor, output must not change
    corpus = tmp_path_factory.mktemp("rest") / "corpus.txt"
    greedy = tiny_lm.generate([tiny_lm.encode(TEXT)], max_new_tokens=24)[0]
    corpus.write_text((TEXT + tiny_lm.decode(greedy) + " ") * 3)  # retrieval finds the continuation
    distill = DistillSpec(draft=draft, gamma=3)
    from safetensors.torch import save_model

    distill._draft_file = str(tmp_path_factory.mktemp("distill") / "draft.safetensors")
    save_model(load(draft, "cpu").model, distill._draft_file)
    eagle, eagle2 = Eagle(), Eagle2(total_tokens=12, depth=4, top_k=3)
    eagle._head_state = eagle2._head_state = head.state_dict()
    return {
        "sps": SpS(draft=draft, gamma=3),
        "specinfer": SpecInfer(drafts=(draft, tiny_model_with(seed=8)), expansion=(2, 2, 1)),
        "rest": REST(corpus=str(corpus), num_draft=8),
        "rest_official": REST(corpus=str(corpus), num_draft=8, acceptance="official"),
        "hf_assisted": HFAssisted(draft=draft),
        "eagle": eagle,
        "eagle2": eagle2,
        "distillspec": distill,
    }


NAMES = ["sps", "specinfer", "rest", "hf_assisted", "eagle", "eagle2", "distillspec"]


@pytest.mark.fidelity(
    *NAMES, reference="the target's own greedy decoding (LM.generate without a method)", tolerance="exact tokens"
)
@pytest.mark.parametrize("name", NAMES + ["rest_official"])
def test_greedy_output_equals_the_targets_greedy_output(tiny_lm, methods, name):
    prompts = [tiny_lm.encode(TEXT), tiny_lm.encode(" Hina tulskited.")]
    plain = tiny_lm.generate(prompts, max_new_tokens=14)
    before = tiny_lm.telemetry["forward_calls"]
    with methods[name].apply(tiny_lm, MethodContext()):
        spec = tiny_lm.generate(prompts, max_new_tokens=14)
        assert methods[name].check_effect(tiny_lm, MethodContext(), None) is None
    assert spec == plain
    assert tiny_lm.telemetry["forward_calls"] - before <= sum(len(x) for x in spec)


def _histogram_test(tiny_lm, method, seeds=60, temperature=0.1):
    """The task's G-test at a low temperature, where the random tiny model's distributions are
    peaked enough for small histograms to have power."""
    task = SpecAcceptance(sampling_seeds=seeds, sampling_tokens=2, sampling_prefixes=1)
    ctx = SimpleNamespace(lm=tiny_lm, seed=0)
    with method.apply(tiny_lm, MethodContext()):
        return task._distribution_test(ctx, [("p", tiny_lm.encode(TEXT))], temperature)


@pytest.mark.fidelity(
    *NAMES,
    reference="the target's exact next-token distribution (histograms of sampled tokens; a broken rule is the control)",
    tolerance="G-test p > 0.001",
)
@pytest.mark.parametrize("name", NAMES)
def test_sampled_tokens_follow_the_targets_distribution(tiny_lm, methods, name):
    result = _histogram_test(tiny_lm, methods[name])
    assert result["groups"] and result["p_value"] > 1e-3, result


def test_rest_released_sampling_rule_runs_and_drafts(tiny_lm, methods):
    """REST's released sample-and-match rule decodes at T > 0 (its law is tested in
    test_rest_acceptance.py; it is not the target's, so it is not in the distribution test)."""
    before = tiny_lm.telemetry["accepted_draft_tokens"]
    with methods["rest_official"].apply(tiny_lm, MethodContext()):
        out = tiny_lm.generate([tiny_lm.encode(TEXT)], max_new_tokens=16, temperature=0.05, seed=3)[0]
    assert len(out) == 16 and tiny_lm.telemetry["accepted_draft_tokens"] > before


def test_distribution_test_rejects_a_broken_acceptance_rule(tiny_lm, methods, monkeypatch):
    """Control: a verification that samples from norm(√p) instead of p must be rejected. (The random
    test models agree with each other too often for a wrong acceptance of drafts to show: with tied
    embeddings each mostly predicts its last input token.)"""

    def sample_from_sqrt_p(p, tree, temperature, generator=None):
        q = p[0].sqrt()
        return [], [int(torch.multinomial(q / q.sum(), 1, generator=generator))]

    monkeypatch.setattr(_tree, "verify_tree", sample_from_sqrt_p)
    assert _histogram_test(tiny_lm, methods["specinfer"])["p_value"] < 1e-3


def _eval(tiny_model, tmp_path, **task_args):
    args = {
        "prompts": "2",
        "max_new_tokens": "10",
        "warmups": "1",
        "repeats": "1",
        "sampling_prefixes": "1",
        "sampling_seeds": "60",
        "sampling_tokens": "2",
        **task_args,
    }
    cells = runner.resolve(["spec_acceptance"], ["sps"], tiny_model, args, {"draft": tiny_model}, limit=2)
    return runner.evaluate(cells, device="cpu", out=tmp_path)[0]


def test_task_record_holds_tau_acceptance_speedup_and_losslessness(tiny_model, tmp_path):
    out = _eval(tiny_model, tmp_path, temperatures="0,0.1")  # 0.1: peaked enough to test
    rec = records.read(out.path)
    m = rec["metrics"]
    assert m["lossless_greedy"]["value"] == 1 and m["lossless_sampling"]["value"] == 1
    assert rec["main_metric"] == "tau@T0" and "tau" not in m and "speedup" not in m  # never across temperatures
    assert m["speedup@T0"]["value"] > 0 and 0 <= m["acceptance_rate"]["value"] <= 1
    rows = records.read_samples(out.path)
    for t in ("0", "0.1"):  # τ pooled over the prompts: their new tokens over their target forwards
        sub = [r for r in rows if f"{r['temperature']:g}" == t]
        pooled = sum(r["new_tokens"] for r in sub) / sum(r["target_forwards"] for r in sub)
        assert m[f"tau@T{t}"]["value"] == pytest.approx(pooled) and m[f"tau@T{t}"]["n"] == len(sub) == 2
        assert rec["details"]["per_temperature"][t]["new_tokens"] == sum(r["new_tokens"] for r in sub)
    assert rec["details"]["sampling_test"]["groups"]
    info = rec["details"]["per_temperature"]["0"]
    assert info["gamma"] == 4 and info["tau_analytic"] >= 1 and "1" in info["per_position_acceptance"]
    assert rec["details"]["threads"] == 1


def test_a_lossy_method_fails_the_cell_without_a_record(tiny_model, tmp_path, monkeypatch):
    def wrong_bonus(p, q, draft, generator=None):  # accepts every draft token, then a non-argmax token
        return list(draft) + [(int(p[len(draft)].argmax()) + 1) % p.shape[-1]], len(draft)

    def wrong_greedy_bonus(logits, draft):  # the same fault in sps's temperature-0 path
        return wrong_bonus(logits, None, draft)

    monkeypatch.setattr(sps_module, "verify_chain", wrong_bonus)
    monkeypatch.setattr(sps_module, "verify_greedy", wrong_greedy_bonus)
    with pytest.raises(NotLossless, match="differs from autoregressive greedy"):
        _eval(tiny_model, tmp_path, temperatures="0")
    assert not list(tmp_path.rglob("*.json"))


def test_prompt_file_errors_name_file_and_line(tmp_path, tiny_model):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a b"}\n{"prompt": \n')
    with pytest.raises(UserError, match=r"p\.jsonl line 2 is not valid JSON"):
        read_prompts(str(bad))
    bad.write_text('{"question_id": 7, "turns": ["first turn", "second"]}\n{"text": "x"}\n')
    with pytest.raises(UserError, match="line 2 has no non-empty"):
        read_prompts(str(bad))
    bad.write_text('{"question_id": 7, "turns": ["first turn", "second"]}\n')
    assert read_prompts(str(bad)) == [("7", "first turn")]
    long = tmp_path / "long.txt"
    long.write_text("short prompt\n" + "word " * 200 + "\n")
    from harness.lm import LM

    lm = LM(load(tiny_model, "cpu"))
    with pytest.raises(UserError, match=r"long\.txt line 2 has \d+ tokens"):
        SpecAcceptance(prompt_file=str(long), max_new_tokens=8).load_prompts(lm, 0, None)


def test_sidecar_rows_hold_token_ids_and_losslessness_is_on_ids(tiny_model, tiny_lm, tmp_path):
    """The per-sample rows carry the exact ids: at T=0 both the method's and autoregressive's equal
    the target's own greedy continuation (computed here without the task), and decode to the text."""
    path = _eval(tiny_model, tmp_path, temperatures="0", sampling_prefixes="0").path
    rows = records.read_samples(path)
    prompts = SpecAcceptance(prompts=2).load_prompts(tiny_lm, 0, 2)
    assert len(rows) == len(prompts) == 2
    for row, (pid, ids) in zip(rows, prompts):
        greedy = tiny_lm.generate([ids], max_new_tokens=10)[0]
        assert row["prompt_id"] == pid
        assert row["prediction_ids"] == row["baseline_ids"] == list(greedy)
        assert row["prediction"] == tiny_lm.decode(row["prediction_ids"]) and row["lossless"] == 1


def test_pooled_ratio_and_its_delta_method_error_against_hand_computation():
    """Metric.ratio: Σy / Σx, not the mean of the ratios (which a short degenerate sample can
    dominate), with the ratio estimator's standard error sqrt(Σ(y - R x)² / (n - 1) / n) / x̄."""
    from harness.interfaces import Metric

    m = Metric.ratio([2, 4, 9], [1, 2, 3], "higher")
    assert m.value == pytest.approx(15 / 6) and m.n == 3
    assert m.stderr == pytest.approx(((0.25 + 1 + 2.25) / 2 / 3) ** 0.5 / 2)
    assert m.value != pytest.approx((2 + 2 + 3) / 3)
    assert Metric.ratio([3], [2], "higher").stderr is None
