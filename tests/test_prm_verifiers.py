"""GenRM, V-STaR and OmegaPRM (mcts_labels) on the synthetic world: each against an independent
transcription (a softmax written out with math.exp, the DPO objective term by term, a brute-force
first-error scan), and each trained verifier separates correct from wrong solutions of held-out
(evaluation-side) problems better than chance (AUROC printed with -s)."""

import functools
import math
import random

import pytest
import torch
from sklearn.metrics import roc_auc_score

from harness import mathworld
from harness.interfaces import MethodContext
from harness.methods.prm import _world
from harness.methods.prm.genrm import GenRM
from harness.methods.prm.mcts_labels import MCTSLabels, first_error
from harness.methods.prm.vstar import VSTaR, dpo_loss

SMALL = {"d_model": 16, "layers": 1, "heads": 2}


def _ids_by_hand(problem, steps, extra):
    """The verification sequence spelled out: problem, problem-end marker, each step + step marker."""
    ids = _world.tokens(problem) + [_world.PROBLEM_END]
    for s in steps:
        ids += _world.tokens(s) + [_world.STEP]
    return ids + _world.tokens(extra)


@pytest.mark.fidelity("genrm", reference="the softmax of the Yes logit written out with math.exp", tolerance="rel 1e-4")
@pytest.mark.parametrize("normalize", ["vocab", "yes_no"])
def test_genrm_direct_score_is_the_softmax_of_yes(normalize):
    torch.manual_seed(0)
    m = GenRM(normalize=normalize, **SMALL)
    m._nets = {"verifier": m.new_net().eval()}
    prob = mathworld.problem(7)
    sols = [[s.text for s in mathworld.Policy().sample(prob, j)] for j in range(3)]
    got = [x[0] for x in m.score(prob.text, sols)]
    yes, no = _world.tokens("Yes")[0], _world.tokens("No")[0]
    for steps, g in zip(sols, got):
        ids = _ids_by_hand(prob.text, steps, "Is the answer correct (Yes/No)?")
        with torch.no_grad():
            logits = m._nets["verifier"](torch.tensor([ids]))[0, -1].tolist()
        classes = range(len(logits)) if normalize == "vocab" else (yes, no)
        want = math.exp(logits[yes]) / sum(math.exp(logits[j]) for j in classes)
        assert g == pytest.approx(want, rel=1e-4)


def test_genrm_cot_averages_yes_over_the_sampled_rationales():
    torch.manual_seed(1)
    m = GenRM(cot=True, votes=5, **SMALL)
    net = m.new_net().eval()
    m._nets = {"verifier": net}
    prob = mathworld.problem(9)
    steps = [s.text for s in mathworld.Policy().sample(prob, 0)]
    head = _ids_by_hand(prob.text, steps, "Check:")
    gen = torch.Generator().manual_seed(123)
    seqs = m.sample_rationales(net, [head] * 5, len(steps) + 1, gen)
    stop = _world.tokens(".")[0]
    assert all(s[: len(head)] == head and (s[-1] == stop or len(s) == len(head) + len(steps) + 1) for s in seqs)
    yes = _world.tokens("Yes")[0]
    probs = []
    for s in seqs:
        with torch.no_grad():
            logits = net(torch.tensor([s + _world.tokens("Is the answer correct (Yes/No)?")]))[0, -1].tolist()
        probs.append(math.exp(logits[yes]) / sum(math.exp(x) for x in logits))
    assert m.verify(net, seqs) == pytest.approx(probs, rel=1e-4)
    # the score is the mean of those probabilities (the same sampler, seeded by the problem text)
    (score,) = m.solution_scores(prob.text, [steps])
    assert 0 < score[0] < 1


@pytest.mark.fidelity(
    "vstar", reference="the DPO objective term by term with math.log and math.exp", tolerance="rel 1e-6"
)
def test_dpo_loss_matches_the_objective_written_out():
    pw, rw, pl, rl = [-3.0, -10.0, -1.5], [-4.0, -9.0, -2.5], [-7.0, -8.0, -1.0], [-5.0, -8.5, -3.0]
    beta = 0.1
    want = sum(-math.log(1 / (1 + math.exp(-beta * ((a - b) - (c - d))))) for a, b, c, d in zip(pw, rw, pl, rl)) / len(
        pw
    )
    got = dpo_loss(*(torch.tensor(v) for v in (pw, rw, pl, rl)), beta)
    assert float(got) == pytest.approx(want, rel=1e-6)


@pytest.mark.fidelity(
    "vstar", reference="β·(log π − log π_ref) summed token by token with math.exp", tolerance="rel 1e-3, abs 1e-3"
)
def test_vstar_reward_is_beta_times_the_log_ratio_of_the_two_models():
    torch.manual_seed(2)
    m = VSTaR(beta=0.5, **SMALL)
    m._nets = {"verifier": m.new_net().eval(), "ref": m.new_net().eval()}
    prob = mathworld.problem(4)
    steps = [s.text for s in mathworld.Policy().sample(prob, 1)]
    ids = _ids_by_hand(prob.text, steps, "")
    start = ids.index(_world.PROBLEM_END) + 1

    def logp(net):  # Σ_t log softmax(logits[t-1])[ids[t]] over the solution's tokens
        with torch.no_grad():
            lg = net(torch.tensor([ids]))[0].tolist()
        return sum(lg[t - 1][ids[t]] - math.log(sum(math.exp(x) for x in lg[t - 1])) for t in range(start, len(ids)))

    ((got,),) = m.solution_scores(prob.text, [steps])
    assert got == pytest.approx(0.5 * (logp(m._nets["verifier"]) - logp(m._nets["ref"])), rel=1e-3, abs=1e-3)
    m.score_as = "likelihood"
    ((lik,),) = m.solution_scores(prob.text, [steps])
    assert lik == pytest.approx(logp(m._nets["verifier"]), rel=1e-4)


@pytest.mark.fidelity("mcts_labels", reference="a brute-force first-error scan", tolerance="exact")
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_binary_search_finds_the_brute_force_first_error(n):
    for err in range(1, n + 1):  # the prefix of m steps has MC 0 iff it contains step err
        calls = []

        def mc(m):
            calls.append(m)
            return 0.0 if m >= err else 0.25 + 0.5 * random.random()

        brute = next(m for m in range(1, n + 1) if (0.0 if m >= err else 1.0) == 0)
        got, probes = first_error(n, mc)
        assert got == brute == err
        assert [p[0] for p in probes] == calls and len(calls) <= math.ceil(math.log2(n)) if n > 1 else not calls


def test_omega_tree_spends_at_most_its_budget_and_labels_first_errors():
    m = MCTSLabels(k=4, budget=40, searches=5, problems=1, **SMALL)
    policy = mathworld.Policy()
    prob = next(p for p in map(mathworld.problem, range(50)) if p.difficulty > 1.5 and len(p.ops) >= 4)
    nodes, spent = m.tree(prob, policy, random.Random(0))
    assert spent <= 40 and spent % 4 == 0 and nodes[0].prefix == []
    gold = str(prob.answer)
    for node in nodes:
        if node.prefix and mathworld.finished(prob, node.prefix):  # finished nodes carry exact labels
            assert node.mc == float(mathworld.final_answer(prob, node.prefix) == gold)
        assert 0 <= node.mc <= 1


def _auroc(method, n_problems=40, samples=8):
    probs, sols = mathworld.pools(n_problems, samples, mathworld.EVAL_SEED_BASE)
    by = {}
    for s in sols:
        by.setdefault(s["problem_id"], []).append(s)
    ys, ss = [], []
    for p in probs:
        pool = by[p["id"]]
        ys += [s["answer"] == p["answer"] for s in pool]
        ss += [method.aggregate(x) for x in method.score(p["problem"], [s["steps"] for s in pool])]
    return roc_auc_score(ys, ss)


@pytest.mark.parametrize(
    "cls,args",
    [
        # GenRM learns slowly on this world: at 40 problems x 2 epochs its held-out AUROC is 0.39-0.67
        # across init seeds 0-5, so it is checked at its default budget (0.56-0.61 at seeds 0-2)
        pytest.param(GenRM, {}, marks=pytest.mark.slow),
        (VSTaR, {"problems": 40, "epochs": 2, "sft_epochs": 30}),
        (MCTSLabels, {"problems": 200, "epochs": 4}),
    ],
)
def test_trained_verifier_separates_held_out_solutions(cls, args):
    m = cls(**args)
    m.fit(None, MethodContext(seed=0), log=lambda msg: None)
    auc = _auroc(m)
    print(f"{cls.name}: held-out AUROC {auc:.3f}")
    assert auc > 0.55


@functools.cache
def _longest_world_solutions():
    """Per problem-text/solution pair of the committed grids' world pools (prm.yaml: world v1,
    seed 0; prm_v2.yaml: world v2, seeds 0-2), the one with the longest solution, per version."""
    out = []
    for version, seeds in ((1, (0, 1, 2)), (2, (0, 1, 2))):
        for seed in seeds:
            probs, sols = mathworld.world(version).pools(200, 64, mathworld.EVAL_SEED_BASE + 100_000 * seed)
            text = {p["id"]: p["problem"] for p in probs}
            s = max(sols, key=lambda s: sum(len(_world.tokens(t)) + 1 for t in s["steps"]))
            out.append((text[s["problem_id"]], s["steps"]))
    return out


@pytest.mark.parametrize("cls,args", [(GenRM, {}), (GenRM, {"cot": True}), (VSTaR, {})])
def test_default_context_holds_every_solution_the_grids_score(cls, args):
    # world v1's pools hold a 268-token solution: at the old max_len 256 the grid's genrm and vstar
    # cells refused it after their fits had run
    m = cls(**args)
    for problem, steps in _longest_world_solutions():
        ids, start = m.encode(problem, steps)
        assert len(ids) + m.reserved(steps) <= m.max_len
        assert ids[start:] == _ids_by_hand("", steps, "")[1:]  # the whole solution is kept
