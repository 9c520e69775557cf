from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.methods.spec._eagle import EagleBase
from harness.methods.spec._tree import Tree

# A sparse static tree in EAGLE's `choices` format (each entry: the top-k ranks along a path from
# the root), shaped like EAGLE's mc_sim trees but with 20 nodes for a 2.6M-parameter target; the
# 63-node mc_sim_7b_63 is tuned for Vicuna-7B on a GPU. This project's choice.
DEFAULT_CHOICES = (
    "0",
    "1",
    "2",
    "3",
    "0.0",
    "0.1",
    "0.2",
    "1.0",
    "1.1",
    "2.0",
    "0.0.0",
    "0.0.1",
    "0.1.0",
    "1.0.0",
    "0.0.0.0",
    "0.0.0.1",
    "0.1.0.0",
    "0.0.0.0.0",
    "0.0.0.0.0.0",
    "0.0.0.0.0.0.0",
)


@register
@dataclass
class Eagle(EagleBase):
    """EAGLE — Li et al., "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty"
    (ICML 2024, arXiv:2401.15077); head and loss from SafeAILab/EAGLE (cnets1.py, train/main.py).

    A draft head autoregresses on the target's second-to-top features: fc(concat(embedding of the
    next token, feature)) -> one decoder layer -> the target's frozen LM head. Trained by `harness
    fit` on training-side synthetic text: v_w · SmoothL1(feature) + p_w · CE(target's token
    distribution), v_w = 1.0, p_w = 0.1, uniform input noise. EAGLE-1 drafts a static tree
    (`choices`: top-k rank paths, one head forward per level) verified in one target pass with a
    tree mask; greedy at temperature 0, and above it EAGLE's recursive rejection with q treated as 1
    (drafts are deterministic top-k picks), so the output keeps the target's distribution.
    """

    name = "eagle"
    paper = "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty (arXiv:2401.15077)"
    choices: tuple[str, ...] = field(default=DEFAULT_CHOICES, metadata={"help": "static tree: rank paths like 0.1.0"})

    def __post_init__(self):
        try:
            self._paths = sorted({tuple(int(x) for x in c.split(".")) for c in self.choices}, key=lambda c: (len(c), c))
        except ValueError:
            raise ValueError("choices are dot-separated top-k ranks, e.g. 0.1.0") from None
        if any(min(p) < 0 or (len(p) > 1 and p[:-1] not in self._paths) for p in self._paths):
            raise ValueError("every choice needs non-negative ranks and its parent path among the choices")
        self.max_depth = max(map(len, self._paths))

    def draft(self, state, root_logits, depth, tel) -> Tree:
        tree, node, rows = Tree(), {(): -1}, {(): root_logits}
        for d in range(1, depth + 1):
            if d > 1:
                logits, _ = state.forward_tree(tree)
                tel["draft_forwards"] += 1
                rows.update({p: logits[node[p]] for p in self._paths if len(p) == d - 1})
            for p in (p for p in self._paths if len(p) == d):
                token = int(rows[p[:-1]].topk(p[-1] + 1).indices[p[-1]])
                node[p] = tree.add(node[p[:-1]], token)
        return tree
