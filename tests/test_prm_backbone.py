"""World PRMs fine-tuned from a pretrained causal LM (`backbone=`), as the papers' PRMs start from
their policy's LM: markers, causality under right padding, the fit key and the artifact round trip."""

import pytest
import torch

from harness import artifacts, fitting, params, registry
from harness.interfaces import MethodContext
from harness.methods.prm._world import encode_text, least_logprobs

BACKBONE = "zoo:tiny-llama"
TINY = {"problems": "3", "samples": "2", "rollouts": "2", "epochs": "1", "batch": "4", "backbone": BACKBONE}
STEPS = ["Multiply 8 by 2: 8 * 2 = 16.", "She buys 31 more, so 16 + 31 = 47.", "47 * 4 = 188."]


def _shepherd(**kw):
    return registry.method("math_shepherd")(**kw)


def test_markers_are_the_last_token_of_the_problem_and_of_each_step():
    m = _shepherd(backbone=BACKBONE, read_problem=True)
    m._net_new()
    tok = m._tokenizer
    ids, marks = m.encode("Juno has 8 beads. How many?", STEPS)
    assert ids[0] == tok.bos_token_id and len(marks) == len(STEPS) + 1
    assert tok.decode(ids[: marks[0] + 1], skip_special_tokens=True) == "Juno has 8 beads. How many?\n\n"
    for k in range(1, len(marks)):  # each marker closes one step and its blank line
        assert tok.decode(ids[marks[k - 1] + 1 : marks[k] + 1]) == STEPS[k - 1] + "\n\n"
    joint = tok("Juno has 8 beads. How many?\n\n" + "".join(s + "\n\n" for s in STEPS))["input_ids"]
    assert ids == joint  # segment by segment is how the LM tokenises the joined text here
    cut, cut_marks = encode_text(tok, "word " * 400, STEPS, 96)  # a long problem is cut from its start
    assert len(cut) == 96 and cut_marks[-1] == 95


def test_backbone_outputs_match_a_separate_forward_of_each_prefix():
    """The batched, right-padded network's output at a step's marker equals the head on the trunk's
    last state of that prefix run alone (causal: later steps and pads change nothing)."""
    m = _shepherd(backbone=BACKBONE)
    net = m._net_new().eval()
    torch.nn.init.normal_(net.head.weight)  # a non-zero head, so the check reads the trunk
    a, b = m.encode("", STEPS), m.encode("", STEPS[:2] + ["Give up."])
    with torch.no_grad():
        batch = net(torch.tensor([a[0], b[0] + [0] * (len(a[0]) - len(b[0]))]))
        for k, mark in enumerate(a[1]):
            alone = net.head(net.trunk(input_ids=torch.tensor([a[0][: mark + 1]])).last_hidden_state[0, -1])
            assert torch.allclose(batch[0, mark], alone, atol=1e-4)
        assert torch.allclose(batch[0, a[1][:3]], batch[1, b[1][:3]], atol=1e-4)
        assert not torch.allclose(batch[0, a[1][3]], batch[1, b[1][3]], atol=1e-4)


def test_backbone_keys_the_fit_only_when_chosen():
    plain, lm = _shepherd(), _shepherd(backbone=BACKBONE)
    assert "backbone" not in params.to_dict(plain) and "backbone_lr" not in params.to_dict(plain)
    assert "backbone" not in plain.fit_params(None, MethodContext())
    key = lm.fit_params(None, MethodContext())
    assert key["backbone"] == BACKBONE and len(key["backbone_sha256"]) == 64 and key["backbone_lr"] == 3e-4
    with pytest.raises(ValueError, match="backbone_lr"):
        _shepherd(backbone_lr=0)


def test_fit_fine_tunes_the_backbone_and_the_artifact_scores_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    key, payload = fitting.fit(
        "math_shepherd", "none", "math_prm_bon", {"world_version": "2"}, TINY, log=lambda s: None
    )
    assert payload["fit_params"]["backbone"] == BACKBONE and payload["trajectories"] == 6
    fitted = _shepherd(**{k: (v if k == "backbone" else int(v)) for k, v in TINY.items()})
    fitted.use_artifact(payload, artifacts.folder(key))
    fresh = _shepherd(backbone=BACKBONE)._net_new()
    trunk, start = fitted._net.trunk.state_dict(), fresh.trunk.state_dict()
    assert any(not torch.equal(trunk[k], start[k]) for k in start)  # the whole LM is fine-tuned
    assert fitted._net.head.weight.abs().sum() > 0
    scores = fitted.score("", [STEPS, STEPS[:2]])
    assert [len(s) for s in scores] == [3, 2] and all(0 < x < 1 for s in scores for x in s)
    assert scores[0][:2] == pytest.approx(scores[1], abs=1e-5)


def test_an_unknown_backbone_is_a_user_error_before_any_work(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "art"))
    assert main(["fit", "--method", "math_shepherd", "--method-arg", "backbone=zoo:nope"]) == 2
    assert "unknown zoo model 'nope'" in capsys.readouterr().err and not (tmp_path / "art").exists()


def test_least_logprobs_match_a_literal_transcription():
    """least_logprobs (read_logprobs' inputs) against each token's probability from a separate
    forward of its own prefix: the least likely token of every step, then the running minimum;
    the shorter solution is right-padded in the batch."""
    m = _shepherd(backbone=BACKBONE, read_problem=True, read_logprobs=True)
    m._net_new()
    problem = "Juno has 8 beads. How many?"
    solutions = [m.encode(problem, STEPS), m.encode(problem, STEPS[:1] + ["Give up."])]
    got = least_logprobs(m._lm, solutions)
    for (ids, marks), rows in zip(solutions, got):
        assert rows.shape == (len(marks), 2) and rows[0].tolist() == [0.0, 0.0]
        least_so_far = 0.0
        for k in range(1, len(marks)):
            logps = []
            for t in range(marks[k - 1] + 1, marks[k] + 1):  # the step's tokens, its blank line included
                with torch.no_grad():
                    logits = m._lm(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
                logps.append(float(torch.log_softmax(logits.double(), -1)[ids[t]]))
            least_so_far = min(least_so_far, min(logps))
            assert rows[k].tolist() == pytest.approx([min(logps), least_so_far], abs=1e-4)
    assert least_logprobs(m._lm, [m.encode(problem, [])])[0].tolist() == [[0.0, 0.0]]  # the policy stopped at once


def test_read_logprobs_needs_a_backbone_and_keys_the_fit_only_when_chosen():
    with pytest.raises(ValueError, match="read_logprobs"):
        _shepherd(read_logprobs=True)
    assert "read_logprobs" not in params.to_dict(_shepherd(backbone=BACKBONE))
    assert "read_logprobs" not in _shepherd(backbone=BACKBONE).fit_params(None, MethodContext())
    assert _shepherd(backbone=BACKBONE, read_logprobs=True).fit_params(None, MethodContext())["read_logprobs"]


def test_read_logprobs_fit_trains_its_second_head_and_the_artifact_scores_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    args = dict(TINY, read_logprobs="true")
    key, payload = fitting.fit(
        "math_shepherd", "none", "math_prm_bon", {"world_version": "2"}, args, log=lambda s: None
    )
    assert payload["fit_params"]["read_logprobs"] is True
    built = {k: (v if k == "backbone" else int(v)) for k, v in TINY.items()}
    fitted = _shepherd(**built, read_logprobs=True)
    fitted.use_artifact(payload, artifacts.folder(key))
    assert fitted._net.logprob_head.weight.abs().sum() > 0
    assert "_lm" not in dict(fitted._net.named_modules())  # the frozen LM is not part of the saved network
    scores = fitted.score("", [STEPS, STEPS[:2]])
    assert [len(s) for s in scores] == [3, 2] and scores[0][:2] == pytest.approx(scores[1], abs=1e-5)
    with torch.no_grad():  # the second head's reading is part of the scores
        fitted._net.logprob_head.weight.zero_()
    without = [fitted.read(o) for o in fitted.outputs_at_markers("", [STEPS], cache=False)]
    assert without[0] != pytest.approx(scores[0], abs=1e-6)
