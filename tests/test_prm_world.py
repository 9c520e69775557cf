"""The synthetic-world PRMs: Monte Carlo labels (HE/SE, Best-of-K, PAV advantages) with a stub
completer, PQM's loss against its formula written out with scalars, the causal read-out, and a
fit → eval round trip through the artifact store."""

import math
import random

import pytest
import torch

from harness import fitting, mathworld, runner
from harness.methods.prm import _world
from harness.methods.prm.pav import PAV, pav_steps


@pytest.mark.fidelity(
    "math_shepherd",
    "pav",
    reference="a stub completer of known success rate 1/4; hard, soft and Best-of-K labels worked by hand",
    tolerance="exact; rel 1e-6",
)
def test_mc_values_hard_and_soft_with_a_stub_completer():
    prob = mathworld.problem(3)
    policy = mathworld.Policy()
    gold = str(prob.answer)
    steps = policy.sample(prob, 11)
    # the stub reaches the gold answer on every 4th call whatever the prefix: q = 1/4 per prefix
    calls = {"n": 0}

    def completer(p, prefix, rng):
        calls["n"] += 1
        done = list(prefix) + [mathworld.Step("x", None)] * (len(p.ops) - len(prefix))
        value = int(gold) if calls["n"] % 4 == 0 else int(gold) + 1
        return done[:-1] + [mathworld.Step("x", value)]

    q = _world.mc_values(prob, steps, policy, 8, random.Random(0), completer)
    finished = len(steps) == len(prob.ops)
    inner = q[:-1] if finished else q
    assert inner == [0.25] * len(inner)
    if finished:
        assert q[-1] == float(mathworld.final_answer(prob, steps) == gold)
    assert _world.hard([0.0, 0.25, 1.0]) == [0.0, 1.0, 1.0]
    assert _world.best_of_k([0.25, 0.0, 1.0], 4) == pytest.approx([1 - 0.75**4, 0.0, 1.0])


def test_mc_values_of_the_real_policy_are_bounded_and_final_is_exact():
    prob, policy = mathworld.problem(5), mathworld.Policy()
    steps = policy.sample(prob, 2)
    q = _world.mc_values(prob, steps, policy, 6, random.Random(1))
    assert len(q) == len(steps) + 1 and all(0 <= v <= 1 for v in q)


@pytest.mark.fidelity(
    "pav", reference="the effective reward Q^π(k) + α·(Q^μ(k) − Q^μ(k−1)) worked by hand", tolerance="rel 1e-6"
)
def test_pav_effective_reward():
    assert pav_steps([0.5, 0.6, 0.2], [0.7, 0.9, 0.4], 2.0) == pytest.approx([0.6 + 2 * 0.2, 0.2 + 2 * (-0.5)])


@pytest.mark.parametrize("method", ["pav", "pqm"])
def test_product_is_refused_where_step_scores_are_not_probabilities(method, capsys):
    """PAV's Q + alpha*A and PQM's Q-values can be negative: a product of them flips sign with the
    count of negative steps, so it ranks nothing. The CLI refuses it with exit 2 before any fit."""
    from harness.cli import main

    assert main(["eval", "--task", "math_prm_bon", "--method", method, "--method-arg", "agg=product"]) == 2
    err = capsys.readouterr().err
    assert "not probabilities" in err and "Traceback" not in err


def _pqm_by_formula(q, labels, zeta):
    """anchors-prm §4.4 term by term with math.exp."""
    C = [i for i, y in enumerate(labels) if y == 1]
    W = [i for i, y in enumerate(labels) if y == 0]
    terms = []
    for t in C:
        den = (
            math.exp(q[t])
            + math.exp(0)
            + sum(math.exp(q[c]) for c in C if c < t)
            + sum(math.exp(q[w] + zeta) for w in W)
        )
        terms.append(-math.log(math.exp(q[t]) / den))
    if W:
        terms.append(-math.log(math.exp(0) / (math.exp(0) + sum(math.exp(q[w] + zeta) for w in W))))
    return sum(terms) / len(terms)


@pytest.mark.fidelity("pqm", reference="the paper's comparative loss term by term with math.exp", tolerance="rel 1e-6")
@pytest.mark.parametrize("labels", [[1, 1, 0, 0], [1, 0, 1, 1], [0, 0], [1, 1, 1]])
def test_pqm_loss_matches_formula(labels):
    q = [0.3, -1.2, 2.0, 0.7][: len(labels)]
    got = _world.pqm_loss(torch.tensor(q), labels, 4.0)
    assert float(got) == pytest.approx(_pqm_by_formula(q, labels, 4.0), rel=1e-6)


def _official_ranking_loss(rewards, labels, has_neg, zeta):
    """WindyLee0822/Process_Q_Model train_main.py PRMTrainer.ranking_loss, transcribed line by line
    (args.zeta passed in); rewards [B, T], labels [B, T] in {1, 0}, has_neg [B]."""
    pos_rewards_exp = torch.where(labels == 1, (rewards).exp(), 0)
    neg_rewards_exp = torch.where(labels == 0, (rewards + zeta).exp(), 0).flip(dims=[-1])
    neg_reward_sum = neg_rewards_exp.sum(-1)
    pos_rewards_ = torch.where(labels == 1, (rewards).exp(), 0)
    pos_rewards_cumsum = torch.cat([torch.zeros(rewards.shape[0], 1), pos_rewards_.cumsum(-1)[:, 1:]], dim=1)
    reward_exp_cur = torch.where(labels == 1, pos_rewards_exp, 1)
    reward_exp_cur = torch.cat([torch.zeros(rewards.shape[0], 1).exp(), reward_exp_cur], dim=-1)
    pos_rewards_cumsum = torch.cat(
        [torch.zeros(rewards.shape[0], 1), pos_rewards_cumsum + torch.zeros(rewards.shape[0], 1).exp()], dim=-1
    )
    loss = -torch.log(reward_exp_cur / (reward_exp_cur + pos_rewards_cumsum + neg_reward_sum[..., None] + 1e-5))
    labels = torch.cat([has_neg[..., None], labels], dim=-1)
    loss = (torch.where(labels == 1, loss, 0).sum(-1) / torch.where(labels == 1, 1, 0).sum(-1)).mean()
    return loss


@pytest.mark.fidelity(
    "pqm", reference="WindyLee0822/Process_Q_Model ranking_loss transcribed line by line", tolerance="rel 1e-9"
)
@pytest.mark.parametrize("labels", [[1, 1, 0, 0], [1, 0, 1, 1], [0, 0], [1, 1, 1], [0, 1, 1, 0]])
def test_pqm_official_variant_matches_the_released_ranking_loss(labels):
    q = torch.tensor([0.3, -1.2, 2.0, 0.7][: len(labels)], dtype=torch.float64)
    y = torch.tensor([labels])
    want = _official_ranking_loss(q[None], y, torch.tensor([int(0 in labels)]), 4.0)
    got = _world.pqm_loss(q, labels, 4.0, "official")
    assert float(got) == pytest.approx(float(want), rel=1e-9)
    if labels.count(1) > 1 or (labels.count(1) == 1 and labels[0] != 1):  # the variants differ here
        assert float(got) != pytest.approx(float(_world.pqm_loss(q, labels, 4.0)), rel=1e-7)


def test_pqm_default_is_the_papers_loss():
    from harness.methods.prm.pqm import PQM

    assert PQM().loss_variant == "paper" and PQM().zeta == 4.0
    with pytest.raises(ValueError, match="loss_variant"):
        PQM(loss_variant="nce")


def test_scores_are_causal_in_the_steps():
    net = _world.StepNet(16, 1, 2, 256, 1).eval()
    a_ids, a_pos = _world.encode("P?", ["s1", "s2", "s3"], 256)
    b_ids, b_pos = _world.encode("P?", ["s1", "s2", "zz"], 256)
    with torch.no_grad():
        a, b = net(torch.tensor([a_ids]))[0, a_pos], net(torch.tensor([b_ids]))[0, b_pos]
    assert torch.allclose(a[:3], b[:3], atol=1e-5) and not torch.allclose(a[3], b[3])


def test_fit_then_eval_uses_the_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "art"))
    args = {"problems": "4", "samples": "2", "rollouts": "2", "epochs": "2", "d_model": "16", "layers": "1"}
    key, payload = fitting.fit("pav", "none", None, {}, args, log=lambda m: None)
    assert payload["trajectories"] == 8 and len(payload["loss_trace"]) == 2 and payload["model"] == "none"
    cells = runner.resolve(
        ["math_prm_bon"],
        ["pav"],
        None,
        {"world_problems": "3", "world_samples": "4", "trials": "5", "bootstrap": "5"},
        args,
    )
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path / "out")
    assert out.record["provenance"]["method_artifact"] == [key]
    m = PAV(**{k: int(v) for k, v in args.items()})
    assert m.needs_fit(None, None)


class _CheckerPRM:
    """A stand-in PRM for the search test that verifies each step's text: the cue's operation and
    number, the carried amount and the arithmetic ("a op b = c")."""

    CUES = {"buys": "+", "gives": "-", "times": "*", "shares": "/", "gets": "+"}

    def outputs_at_markers(self, problem, solutions, cache=True):
        import re

        outs = []
        for steps in solutions:
            rows, prev = [[0.0]], int(re.search(r"has (\d+)", problem).group(1))
            for s in steps:
                m = re.search(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)\.", s)
                if m is None:  # the policy gave up
                    rows.append([-5.0])
                    continue
                a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                true = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else a}[op]
                cue = next(v for k, v in self.CUES.items() if k in s)
                y = re.search(r"(\d+)y \+ (\d+) = (\d+)", s)
                want_b = (
                    (int(y.group(3)) - int(y.group(2))) // int(y.group(1))
                    if y
                    else int(re.search(r"(\d+)", s).group(1))
                )
                ok = c == true and op == cue and a == prev and b == want_b
                rows.append([5.0 if ok else -5.0])
                prev = c
            outs.append(torch.tensor(rows))
        return outs

    def read(self, out):
        return torch.sigmoid(out[1:, 0]).tolist()


def test_beam_search_with_a_step_checker_beats_single_samples():
    from harness.methods.prm.beam_search import BeamSearch

    bs = BeamSearch(prm_args="problems=1", agg="min")
    bs.inner = _CheckerPRM()
    probs, sols = mathworld.pools(12, 1, mathworld.EVAL_SEED_BASE)
    hits = sum(bs.search(p, 16, 0) == p["answer"] for p in probs)
    single = sum(s["answer"] == p["answer"] for p, s in zip(probs, sols))
    assert bs.searches == 12 and hits > single and hits >= 9
    with pytest.raises(Exception, match="synthetic world only"):
        bs.search({"id": "x1", "problem": "2+2?"}, 4, 0)


def test_two_processes_wanting_the_same_scores_compute_them_once(tmp_path, monkeypatch):
    """A sweep's two workers scoring one fitted PRM (its `min` and `last` cells) at the same time:
    the second waits for the first's scores instead of computing them again. Threads stand in for
    the processes (flock locks conflict between two opens in one process too). The first compute
    waits up to 5 s for a second, concurrent one: without the lock one starts and the count is 2."""
    import threading

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    calls, started, second, got = [], threading.Event(), threading.Event(), []

    def compute():
        calls.append(1)
        if len(calls) == 1:
            started.set()
            second.wait(timeout=5)
        else:
            second.set()
        return [torch.tensor([0.25, 0.5])]

    def score():
        got.append(_world.cached_outputs("pav", "k" * 16, "problem", [["a step"]], compute))

    first = threading.Thread(target=score)
    first.start()
    started.wait(timeout=60)
    other = threading.Thread(target=score)
    other.start()
    first.join()
    other.join()
    assert len(calls) == 1
    assert len(got) == 2 and all(torch.equal(g[0], torch.tensor([0.25, 0.5])) for g in got)
