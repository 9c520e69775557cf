"""math_prm_bon: the estimators against brute-force enumeration of all subsets, the importers, and
the task end to end with test scorers."""

import itertools
import json
import random
from dataclasses import dataclass

import numpy as np
import pytest

from harness import mathworld, records, runner
from harness.errors import UserError
from harness.interfaces import StepScorer, TaskContext
from harness.tasks import _bon_metrics as bon
from harness.tasks import _prm_formats as formats
from harness.tasks.math_prm_bon import MathPrmBon


def brute_argmax(scores, correct, n):
    """Mean over all n-subsets of the pick's correctness, ties broken uniformly."""
    vals = []
    for sub in itertools.combinations(range(len(scores)), n):
        top = max(scores[i] for i in sub)
        tied = [i for i in sub if scores[i] == top]
        vals.append(sum(correct[i] for i in tied) / len(tied))
    return sum(vals) / len(vals)


def brute_vote(classes, class_correct, weights, sub):
    totals = {}
    for i in sub:
        if classes[i] >= 0:
            totals[classes[i]] = totals.get(classes[i], 0.0) + weights[i]
    if not totals:
        return 0.0
    best = max(totals.values())
    win = [c for c, t in totals.items() if abs(t - best) < 1e-12]
    return sum(class_correct[c] for c in win) / len(win)


@pytest.mark.parametrize("seed", range(6))
def test_expected_argmax_and_pass_match_enumeration(seed):
    rng = random.Random(seed)
    m = rng.randint(1, 8)
    scores = [rng.choice([0.1, 0.5, 0.5, 0.9, rng.random()]) for _ in range(m)]  # with ties
    correct = [rng.random() < 0.5 for _ in range(m)]
    for n in range(1, m + 1):
        assert bon.expected_argmax(scores, correct, n) == pytest.approx(brute_argmax(scores, correct, n), abs=1e-12)
        subs = list(itertools.combinations(range(m), n))
        exact_pass = sum(any(correct[i] for i in s) for s in subs) / len(subs)
        assert bon.pass_at(sum(correct), m, n) == pytest.approx(exact_pass, abs=1e-12)


def test_large_pool_ratio_uses_log_space():
    scores, correct = list(range(1860)), [i % 7 == 0 for i in range(1860)]
    v = bon.expected_argmax(scores, correct, 1500)
    assert 0 <= v <= 1 and v == pytest.approx(1.0 if correct[-1] else v)  # the top sample is almost always in


@pytest.mark.fidelity(
    "majority", reference="a brute-force vote over every n-subset (ties average the tied classes)", tolerance="rel 1e-6"
)
@pytest.mark.parametrize("seed", range(4))
def test_vote_matches_enumeration_per_subset(seed):
    rng = random.Random(seed)
    m = 7
    classes = [rng.choice([-1, 0, 1, 2]) for _ in range(m)]
    cc = [1.0, 0.0, 0.0]
    weights = [rng.choice([0.2, 0.5, 1.0]) for _ in range(m)]
    for n in (1, 3, 5, 7):
        idx = np.array(list(itertools.combinations(range(m), n)))
        got = bon.vote(classes, cc, weights, idx)
        want = [brute_vote(classes, cc, weights, s) for s in idx]
        assert got == pytest.approx(want)


def test_subsets_are_uniform_without_replacement_and_seeded():
    a = bon.subsets(6, 3, 3000, 7)
    assert (np.sort(a, axis=1)[:, 1:] != np.sort(a, axis=1)[:, :-1]).all()
    assert np.array_equal(a, bon.subsets(6, 3, 3000, 7))
    counts = np.bincount(a.ravel(), minlength=6) / a.size
    assert np.allclose(counts, 1 / 6, atol=0.02)
    assert bon.n_grid(64) == [1, 2, 4, 8, 16, 32, 64] and bon.n_grid(6) == [1, 2, 4, 6]


# -- importers ----------------------------------------------------------------------------------
def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_harness_format_and_errors_name_file_and_line(tmp_path):
    probs = _write(
        tmp_path / "p.jsonl", [{"unique_id": "a", "problem": "1+1?", "solution": "so \\boxed{2}", "level": "Level 2"}]
    )
    sols = _write(
        tmp_path / "s.jsonl",
        [
            {"problem_id": "a", "steps": ["1+1=2", "\\boxed{2}"]},
            {"problem_id": "a", "solution": "x\n\n\\boxed{3}", "answer": "3"},
        ],
    )
    problems, pools = formats.load("harness", probs, sols)
    assert problems[0]["answer"] == "2" and problems[0]["level"] == "2"
    assert pools["a"][0]["answer"] == "2" and pools["a"][1]["steps"] == ["x", "\\boxed{3}"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem_id": "a", "steps": ["x"]}) + "\n{oops\n")
    with pytest.raises(UserError, match=r"bad.jsonl line 2"):
        formats.load("harness", probs, str(bad))
    _write(bad, [{"problem_id": "a", "steps": []}, {"problem_id": "zz", "steps": ["x"]}])
    with pytest.raises(UserError, match=r"line 2: problem_id 'zz'"):
        formats.load("harness", probs, str(bad))
    _write(bad, [{"steps": ["x"]}])
    with pytest.raises(UserError, match=r"line 1: missing field 'problem_id'"):
        formats.load("harness", probs, str(bad))


def test_importers(tmp_path):
    probs = _write(
        tmp_path / "p.jsonl", [{"id": "a", "problem": "P1", "answer": "2"}, {"id": "b", "problem": "P2", "answer": "5"}]
    )
    prm = _write(
        tmp_path / "prm.jsonl",
        [
            {
                "problem": "P1",
                "given_answer": "2",
                "is_correct": True,
                "prm_score": 0.9,
                "orm_score": 0.4,
                "steps": ["s1", "s2"],
            }
        ],
    )
    _, pools = formats.load("prm800k", probs, prm)
    assert pools["a"][0]["scores"] == {"prm800k_prm": [0.9], "prm800k_orm": [0.4]} and pools["a"][0]["answer"] == "2"
    rl = _write(
        tmp_path / "rl.jsonl",
        [{"prompt": "Q", "answers": ["a ки\nb \\boxed{1} ки\n", "c \\boxed{2}"], "label": [1, 0]}],
    )
    problems, pools = formats.load("rlhflow", None, rl, "ки\n")
    (pid,) = pools
    assert problems[0]["answer"] is None and pools[pid][0]["steps"] == ["a", "b \\boxed{1}"]
    assert [s["correct"] for s in pools[pid]] == [True, False]
    pqm = tmp_path / "pqm.json"
    pqm.write_text(
        json.dumps(
            [
                {"question": "P1", "responses": [{"text": "Step 1: x Step 2: \\boxed{2}"}]},
                {"question": "P2", "responses": [{"text": "Step 1: \\boxed{5}"}]},
            ]
        )
    )
    _, pools = formats.load("pqm", probs, str(pqm))
    assert pools["a"][0]["steps"] == ["Step 1: x", "Step 2: \\boxed{2}"] and pools["b"][0]["answer"] == "5"
    sal = _write(
        tmp_path / "sal.jsonl",
        [{"problem": "P", "answer": "4", "completions": ["x\n\n\\boxed{4}"], "scores": [[0.2, 0.7]]}],
    )
    problems, pools = formats.load("sal", None, sal)
    assert problems[0]["answer"] == "4" and list(pools.values())[0][0]["scores"] == {"sal": [0.2, 0.7]}
    with pytest.raises(UserError, match="rl.jsonl line 1: 1 labels for 2 answers"):
        _write(tmp_path / "rl.jsonl", [{"prompt": "Q", "answers": ["a", "b"], "label": [1]}])
        formats.load("rlhflow", None, str(tmp_path / "rl.jsonl"))


# -- the task -----------------------------------------------------------------------------------
@dataclass
class ByErrors(StepScorer):
    """A test scorer that sees the world's hidden error tags: 1 per clean step, 0 per bad one."""

    name = "by_errors"
    errors: dict = None

    def score(self, problem, solutions):
        return [[0.0 if e else 1.0 for e in self.errors[tuple(s)]] for s in solutions]

    def aggregate(self, steps):
        return min(steps) if steps else -1.0


@dataclass
class Constant(StepScorer):
    name = "constant"

    def score(self, problem, solutions):
        return [[1.0] for _ in solutions]

    def aggregate(self, steps):
        return steps[0]


def _run(task, method, limit=None):
    return task.run(TaskContext(lm=None, seed=0, limit=limit, methods=[method]))


def test_task_metrics_with_reference_scorers():
    task = MathPrmBon(world_problems=12, world_samples=8, trials=50, bootstrap=50)
    probs, pools, _ = task.load(0)
    errors = {tuple(s["steps"]): s["step_errors"] for p in probs for s in pools[p["id"]]}
    res = _run(task, ByErrors(errors=errors))
    m = {k: v.value for k, v in res.metrics.items()}
    assert res.details["grid"] == [1, 2, 4, 8]
    assert m["accuracy@1"] == pytest.approx(m["pass@1"])  # one sample: the pick is the sample
    assert m["pass@8"] >= m["accuracy@8"] >= m["accuracy@1"]
    for row in res.samples:  # recompute from the sidecar rows
        assert row["accuracy@4"] == pytest.approx(brute_argmax(row["scores"], row["correct"], 4), abs=1e-6)
    const = _run(task, Constant())
    c = {k: v.value for k, v in const.metrics.items()}
    assert c["accuracy@8"] == pytest.approx(c["pass@1"])  # all tied: a random pick
    assert c["weighted_majority@4"] == pytest.approx(c["majority@4"])  # equal weights, same subsets
    assert c["majority@4"] == pytest.approx(m["majority@4"])  # majority does not depend on the method
    lo, hi = res.details["intervals"]["accuracy@8"]
    assert lo <= m["accuracy@8"] <= hi
    assert len(_run(task, Constant(), limit=3).samples) == 3
    assert _run(MathPrmBon(world_problems=3, world_samples=8, n_max=16, trials=5, bootstrap=5), Constant()).details[
        "grid"
    ] == [1, 2, 4, 8]
    assert _run(MathPrmBon(world_problems=3, world_samples=8, n_max=3, trials=5, bootstrap=5), Constant()).details[
        "grid"
    ] == [1, 2, 3]


def test_majority_cell_writes_record(tmp_path):
    cells = runner.resolve(["math_prm_bon"], ["majority"], None, dict(MathPrmBon.smoke_args), {}, limit=4)
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    assert {"accuracy@1", "majority@8", "pass@8", "accuracy"} <= set(rec["metrics"])
    assert rec["metrics"]["accuracy@8"]["value"] == rec["metrics"]["majority@8"]["value"]
    assert rec["details"]["grader"]["name"] == "harness.mathgrade" and rec["details"]["world"]["policy"]


def test_world_is_seeded_and_answers_are_exact():
    a, b = mathworld.pools(5, 3, 123), mathworld.pools(5, 3, 123)
    assert a == b
    p = mathworld.problem(7)
    clean = [
        s
        for s in (mathworld.Policy().sample(p, j) for j in range(50))
        if len(s) == len(p.ops) and not any(x.error for x in s)
    ]
    assert clean and all(mathworld.final_answer(p, s) == str(p.answer) for s in clean)


def test_bad_task_arguments(tmp_path):
    with pytest.raises(UserError, match="format"):
        runner.resolve(["math_prm_bon"], ["majority"], None, {"format": "csv"}, {})
    with pytest.raises(UserError, match="not a readable file"):
        cells = runner.resolve(
            ["math_prm_bon"],
            ["majority"],
            None,
            {"problems": str(tmp_path / "no" / "p.jsonl"), "solutions": str(tmp_path / "no" / "s.jsonl")},
            {},
        )
        runner.evaluate(cells, device="cpu", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_precomputed_scores_from_a_prm800k_dump(tmp_path):
    from harness.methods.prm.precomputed import Precomputed

    probs = _write(tmp_path / "p.jsonl", [{"id": "a", "problem": "P1", "answer": "\\frac{1}{2}"}])
    rows = [
        {"problem": "P1", "given_answer": ans, "prm_score": sc, "steps": ["s"]}
        for ans, sc in [("0.5", 0.9), ("1/3", 0.8), ("2", 0.1), ("\\frac12", 0.2)]
    ]
    sols = _write(tmp_path / "s.jsonl", rows)
    task = MathPrmBon(problems=probs, solutions=sols, format="prm800k", trials=20, bootstrap=10)
    res = _run(task, Precomputed(key="prm800k_prm"))
    correct = [1, 0, 0, 1]  # 0.5 and \frac12 equal the gold 1/2
    assert res.samples[0]["correct"] == correct
    for n in (1, 2, 4):
        assert res.metrics[f"accuracy@{n}"].value == pytest.approx(brute_argmax([0.9, 0.8, 0.1, 0.2], correct, n))
    assert res.metrics["majority@4"].value == 1.0  # the class {0.5, \frac12} has two votes
    with pytest.raises(UserError, match="no scores"):
        _run(task, Precomputed(key="missing"))
