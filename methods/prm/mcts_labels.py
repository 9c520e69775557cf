from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from harness import mathworld
from harness.registry import register
from harness.methods.prm._world import Trajectory, WorldPRM, soft_bce
from harness.methods.prm.math_shepherd import SMOKE


class _BudgetSpent(Exception):
    pass


def first_error(n: int, mc) -> tuple[int, list[tuple[int, float]]]:
    """OmegaPRM's binary search over a wrong rollout of n new steps whose start has MC > 0 (and
    whose end, a wrong answer, MC = 0): probe the middle prefix; MC > 0 → the first error lies to
    the right, else at or left of it. Returns (e, probes): the prefix of e steps is the first with
    MC = 0 (step e is the first error) and the (length, MC) of every probed prefix."""
    lo, hi, probes = 0, n, []
    while hi - lo > 1:
        mid = (lo + hi) // 2
        v = mc(mid)
        probes.append((mid, v))
        lo, hi = (mid, hi) if v > 0 else (lo, mid)
    return hi, probes


@dataclass
class _Node:
    prefix: list  # mathworld.Step
    mc: float
    visits: int = 0


@register
@dataclass
class MCTSLabels(WorldPRM):
    """OmegaPRM step labels — Luo et al. 2024, "Improve Mathematical Reasoning in Language Models
    by Automated Process Supervision" (arXiv:2406.06592; no official code), anchors-round2 §10;
    defaults from the community implementation openreasoner/openr (data/omegaPRM_v2).

    Per training problem a search tree over step prefixes: a node holds MC(s), the fraction of
    `k` policy rollouts from its prefix that reach the gold answer, and a visit count N(s). Wrong
    rollouts of nodes with 0 < MC < 1 enter a candidate pool; correct rollouts join the tree as
    finished nodes (MC = 1). Each search picks the pool entry maximising
    Q + U = α^(1−MC(s))·β^(len(r)/L) + c_puct·√(Σ_i N(s_i))/(1 + N(s)) (len in words) and
    binary-searches its first error (`first_error`); every probed prefix becomes a node, and the
    first-error prefix gets MC = 0. Stops after `searches` searches, when `budget` rollouts are
    spent, or when the pool is empty. MC is not propagated to ancestors (this project's
    simplification). The step scorer trains on every node's (prefix, MC) with pointwise soft-label
    BCE at the prefix's last step (the paper's best loss, unverified) and reads sigmoid per step.
    Defaults (openr): k = 16, 20 searches, 200 rollouts, α = 0.5, β = 0.9, L = 500, c_puct = 0.125.
    `rollouts` and `samples` of the family are unused here (the tree draws its own rollouts)."""

    name = "mcts_labels"
    paper = "Improve Mathematical Reasoning in Language Models by Automated Process Supervision (arXiv:2406.06592)"
    smoke_args = SMOKE | {"k": "2", "budget": "8", "searches": "2"}
    ranges = {
        "k": "[1, inf)",
        "budget": "[1, inf)",
        "searches": "[0, inf)",
        "alpha": "(0, 1]",
        "beta": "(0, 1]",
        "length_scale": "(0, inf)",
        "c_puct": "[0, inf)",
    }  # checked by params.build before any model loads
    k: int = field(default=16, metadata={"help": "rollouts per node to estimate MC"})
    budget: int = field(default=200, metadata={"help": "rollouts per problem, all nodes together"})
    searches: int = field(default=20, metadata={"help": "binary searches per problem at most"})
    alpha: float = field(default=0.5, metadata={"help": "α of Q: prefer wrong rollouts of likely-correct states"})
    beta: float = field(default=0.9, metadata={"help": "β of Q: prefer shorter rollouts"})
    length_scale: float = field(default=500.0, metadata={"help": "L of Q (words)"})
    c_puct: float = field(default=0.125, metadata={"help": "exploration weight of U"})

    def label_params(self) -> dict:
        keep = ("k", "budget", "searches", "alpha", "beta", "length_scale", "c_puct")
        return {k: getattr(self, k) for k in keep}

    def tree(self, prob: mathworld.Problem, policy, rng) -> tuple[list[_Node], int]:
        """The nodes of one problem's search and the rollouts spent."""
        world, gold, nodes, pool, seen = mathworld.world_of(prob), str(prob.answer), [], [], set()
        spent = 0

        def add(node: _Node) -> _Node:
            key = tuple(s.text for s in node.prefix)
            if key not in seen:
                seen.add(key)
                nodes.append(node)
            return node

        def expand(prefix) -> _Node:
            nonlocal spent
            if spent + self.k > self.budget:
                raise _BudgetSpent
            spent += self.k
            outs = [policy.complete(prob, prefix, rng) for _ in range(self.k)]
            hits = [world.final_answer(prob, o) == gold for o in outs]
            node = add(_Node(list(prefix), sum(hits) / self.k))
            for o, hit in zip(outs, hits):
                if hit:
                    add(_Node(o, 1.0))
                elif 0 < node.mc < 1:
                    pool.append((node, o[len(prefix) :]))
            return node

        try:
            expand([])
            for _ in range(self.searches):
                if not pool:
                    break
                total = math.sqrt(sum(n.visits for n in nodes))

                def qu(entry):
                    s, r = entry
                    words = len(" ".join(x.text for x in r).split())
                    q = self.alpha ** (1 - s.mc) * self.beta ** (words / self.length_scale)
                    return q + self.c_puct * total / (1 + s.visits)

                s, r = pool.pop(max(range(len(pool)), key=lambda i: qu(pool[i])))
                s.visits += 1
                e, _ = first_error(len(r), lambda m: expand(s.prefix + r[:m]).mc)
                if e == len(r):  # the whole (wrong, finished) rollout: its MC is exactly 0
                    add(_Node(s.prefix + r, 0.0))
        except _BudgetSpent:
            pass
        return nodes, spent

    def collect(self, world, policy, rng, seed):
        data, spent = [], 0
        for i in range(self.problems):
            prob = world.problem(i)
            nodes, used = self.tree(prob, policy, rng)
            spent += used
            for n in nodes:
                if n.prefix:  # the root (problem alone) carries no step label
                    q = [None] * len(n.prefix) + [n.mc]
                    data.append(Trajectory(prob.text, [s.text for s in n.prefix], q, n.mc > 0))
        return data, spent

    def loss(self, out, traj):
        at = [k for k, v in enumerate(traj.q) if k > 0 and v is not None]
        return soft_bce(out[at, 0], [traj.q[k] for k in at])

    def read(self, out):
        return torch.sigmoid(out[1:, 0]).tolist()
