from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import register
from harness.methods.spec._eagle import EagleBase
from harness.methods.spec._tree import Tree


@register
@dataclass
class Eagle2(EagleBase):
    """EAGLE-2 — Li et al., "EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees"
    (EMNLP 2024, arXiv:2406.16858); the same head and fit stage as `eagle` (EAGLE-2 reuses EAGLE's
    weights), dynamic tree from SafeAILab/EAGLE cnets.py `topK_genrate`.

    A node's value is its cumulative draft log-probability. The root gets its top_k children (level
    1); then `depth` expansion rounds each expand the top_k frontier nodes by value into top_k
    children each (k² candidates) and keep the best top_k of those as the next frontier, so
    candidates reach depth + 1 levels below the root. Finally the total_tokens − 1 best candidates of
    all levels are the draft nodes: with the root (the last accepted token) the verified tree has
    total_tokens nodes, as `topK_genrate` keeps `self.total_tokens = total_token − 1` (a parent's
    value is never below its child's, so paths stay connected). The picks are deterministic at
    every temperature and verified with draft probability 1, as EAGLE-2's code does: a child x is
    accepted with probability p(x), else p(x) is zeroed and p renormalised for the next sibling;
    lossless per the maintainers (issues #171, #183, #221).

    total_tokens: verified tree size counting the root (official `total_token`). depth: expansion
    rounds (official `depth`; levels = depth + 1). top_k: children per node and frontier width.
    Defaults from the EAGLE-2 eval scripts and Spec-Bench's inference_eagle2.py (`--total-token 60
    --depth 5 --top-k 10`); `EaModel.from_pretrained` at the EAGLE-2 commit has total_token 59.
    """

    name = "eagle2"
    paper = "EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees (arXiv:2406.16858)"
    ranges = {
        "total_tokens": "[1, inf)",
        "depth": "[1, inf)",
        "top_k": "[1, inf)",
    }  # checked by params.build before any model loads
    total_tokens: int = 60
    depth: int = 5
    top_k: int = 10

    def __post_init__(self):
        if min(self.depth, self.top_k) < 1 or self.total_tokens < 2:
            raise ValueError("depth and top_k must be positive and total_tokens at least 2 (the root and a draft)")
        self.max_depth = self.depth + 1  # levels below the root: the root's children + depth rounds

    def draft(self, state, root_logits, depth, tel, temperature=0.0, gen=None) -> Tree:
        # deterministic top-k at every temperature; verified with q = 1 (EAGLE-2's evaluate_posterior)
        tokens, parents, values, level = [], [], [], []  # candidates of every level
        fed, fed_node = Tree(), {}  # expanded candidates, as fed to the head

        def add(parent, lp, d):
            top = lp.topk(self.top_k)
            base = values[parent] if parent >= 0 else 0.0
            for v, t in zip(top.values.tolist(), top.indices.tolist()):
                tokens.append(t), parents.append(parent), values.append(base + v), level.append(d)

        add(-1, torch.log_softmax(root_logits.float(), -1), 1)
        frontier = list(range(len(tokens)))
        for d in range(2, depth + 1):
            for c in frontier:
                fed_node[c] = fed.add(fed_node.get(parents[c], -1), tokens[c])
            logits, _ = state.forward_tree(fed)
            tel["draft_forwards"] += 1
            start = len(tokens)
            for c in frontier:
                add(c, torch.log_softmax(logits[fed_node[c]].float(), -1), d)
            frontier = sorted(range(start, len(tokens)), key=lambda c: -values[c])[: self.top_k]
        keep = set(sorted(range(len(tokens)), key=lambda c: (-values[c], level[c]))[: self.total_tokens - 1])
        for c in list(keep):  # ties could drop a parent: keep every ancestor
            while parents[c] >= 0:
                c = parents[c]
                keep.add(c)
        tree, node = Tree(), {-1: -1}
        for c in sorted(keep, key=lambda c: (level[c], -values[c])):
            node[c] = tree.add(node[parents[c]], tokens[c])
        return tree
