"""Where zoo:tiny-math keeps the world's arithmetic check, and what a verifier built on it does in
best-of-N (issue 25's diagnostic; not a test: run this file, about 10 CPU minutes on one thread).

The fine-tuned PRMs of grids/prm_v2.yaml separate erred from clean prefixes at a held-out step AUROC
of 0.54-0.70, while tiny-math's own token probabilities do at 0.86. This script measures, on frozen
tiny-math (no fine-tuning), with world-v2 policy samples:

1. training-free: a prefix scored by the least likely token of its steps (the solution by its last
   prefix), step AUROC and best-of-N;
2. logistic probes trained on --train problems x 4 training-side samples (step labels: the prefix
   has not erred): on the last hidden state at each step's end, and on that state plus (1)'s score;
   step AUROC on --eval problems x 4, and best-of-N (solution score: the min or the last of its
   prefix scores) with PRM-weighted voting, against majority, on --eval problems x --pool samples
   (the argmax's expectation exactly, the votes over --trials seeded subsets per N; the estimators
   of math_prm_bon).

    python benchmarks/prm_probe.py [--train 400] [--eval 100] [--pool 64] [--trials 100]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch


def features(tok, net, prob, steps) -> tuple[list[np.ndarray], list[float]]:
    """Per step: the last hidden state at the step's end, and the least likely token of the prefix
    (read_logprobs' own feature, methods/prm/_world.least_logprobs). The text is the backbone PRMs'
    (problem, blank line, each step and a blank line)."""
    from harness.methods.prm._world import encode_text, least_logprobs

    ids, marks = encode_text(tok, prob.text, [s.text for s in steps], max_len=1 << 20)
    with torch.no_grad():
        hidden = net(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    least = least_logprobs(net, [(ids, marks)])[0][1:, 1]  # the running minimum at each step's marker
    return [hidden[m].numpy() for m in marks[1:]], least.tolist()


def pools(world, tok, net, base: int, problems: int, samples: int) -> list[list[dict]]:
    policy, out = world.Policy(), []
    for prob in world.problems(problems, base):
        pool = []
        for j in range(samples):
            steps = policy.sample(prob, world.sample_seed(prob, j))
            states, least = features(tok, net, prob, steps)
            answer = world.final_answer(prob, steps)
            pool.append(
                dict(
                    states=states,
                    least=least,
                    ok=world.step_ok(prob, steps),
                    answer=answer,
                    right=answer == str(prob.answer),
                )
            )
        out.append(pool)
    return out


def best_of_n(scored: list[list[tuple[float, str | None, bool]]], grid, trials: int) -> list[tuple]:
    """(N, accuracy of the argmax pick, its share of picks without an answer, accuracy of
    PRM-weighted voting (weights σ(score)), of majority), with math_prm_bon's own estimators: the
    argmax exactly, the votes over `trials` seeded subsets per problem and N."""
    from harness.tasks import _bon_metrics as bon

    rows = []
    for n in grid:
        best = unanswered = weighted = majority = 0.0
        for p, pool in enumerate(scored):
            scores, answers, right = zip(*pool)
            names = sorted({x for x in answers if x is not None})
            classes = [names.index(x) if x is not None else -1 for x in answers]
            class_right = [any(r for x, r in zip(answers, right) if x == c) for c in names]
            idx = bon.subsets(len(pool), n, trials, bon.subset_seed(0, str(p), n))
            best += bon.expected_argmax(scores, right, n)
            unanswered += bon.expected_argmax(scores, [x is None for x in answers], n)
            weighted += bon.vote(classes, class_right, [1 / (1 + math.exp(-x)) for x in scores], idx).mean()
            majority += bon.vote(classes, class_right, [1.0] * len(pool), idx).mean()
        rows.append((n, *(float(v) / len(scored) for v in (best, unanswered, weighted, majority))))
    return rows


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from harness import mathworld, models

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=400, help="training-side problems (4 samples each)")
    ap.add_argument("--eval", type=int, default=100, help="evaluation-side problems")
    ap.add_argument("--pool", type=int, default=64, help="samples per evaluation problem")
    ap.add_argument("--trials", type=int, default=100, help="seeded subsets per N for the votes")
    a = ap.parse_args()
    torch.set_num_threads(1)
    world = mathworld.world(2)
    loaded = models.load("zoo:tiny-math", device="cpu")
    tok, net = loaded.tokenizer, loaded.model.float().eval()
    train = pools(world, tok, net, 0, a.train, 4)
    evals = pools(world, tok, net, mathworld.EVAL_SEED_BASE, a.eval, a.pool)
    grid = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= a.pool]

    def steps(pools_, key, first=None):
        return [x for p in pools_ for s in p[:first] for x in s[key]]

    y, y_eval = np.array(steps(train, "ok")), np.array(steps(evals, "ok", 4))
    inputs = {
        "hidden state at the step end": lambda s: np.array(s["states"]),
        "hidden state + least likely token": lambda s: np.c_[np.array(s["states"]), np.array(s["least"])],
    }
    print(f"zoo:tiny-math frozen; world v2; {len(y)} training steps, {len(y_eval)} held-out steps\n")
    print("| verifier | step AUROC (held out) |\n|---|---|")
    print(f"| least likely token of the prefix (no training) | {roc_auc_score(y_eval, steps(evals, 'least', 4)):.3f} |")
    probes = {}
    for name, x in inputs.items():
        probes[name] = LogisticRegression(max_iter=3000).fit(np.concatenate([x(s) for p in train for s in p]), y)
        held = np.concatenate([x(s) for p in evals for s in p[:4]])
        print(f"| logistic probe: {name} | {roc_auc_score(y_eval, probes[name].decision_function(held)):.3f} |")
    print(f"\nbest-of-N on {a.eval} held-out problems x {a.pool} samples, votes over {a.trials} subsets per N\n")
    print("| verifier | aggregation | N | best-of-N | its picks without an answer | PRM-weighted vote | majority |")
    print("|---|---|---|---|---|---|---|")
    verifiers = [("least likely token (no training)", "last", lambda s: np.array(s["least"]))]
    verifiers += [
        (f"probe: {name}", agg, (lambda s, p=probes[name], x=x: p.decision_function(x(s))))
        for name, x in inputs.items()
        for agg in ("min", "last")
    ]
    for name, agg, score in verifiers:
        scored = []
        for pool in evals:
            rows = []
            for s in pool:
                per_step = score(s)
                value = (per_step.min() if agg == "min" else per_step[-1]) if len(per_step) else -1e9
                rows.append((float(value), s["answer"], s["right"]))
            scored.append(rows)
        for n, best, unanswered, weighted, majority in best_of_n(scored, grid, a.trials):
            print(f"| {name} | {agg} | {n} | {best:.3f} | {unanswered:.3f} | {weighted:.3f} | {majority:.3f} |")


if __name__ == "__main__":
    main()
