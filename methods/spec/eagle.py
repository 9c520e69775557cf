from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.spec._common import probs
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
    tree mask. Greedy at temperature 0 (a node's children are its top-k tokens). Above it, as
    EAGLE-1's code (SafeAILab/EAGLE@2320d52 utils.py): a node's children are draws without
    replacement from the draft distribution q (temperature-scaled), the j-th recorded with
    q_j = q with the earlier draws zeroed and renormalised (q_j(x_j) = q(x_j) / (1 − Σ_{i<j} q(x_i)),
    issue #74); verification tries them in order, accepting x with min(1, p(x)/q_j(x)) and after a
    rejection continuing with p ← norm(max(p − q_j, 0)); if all fail, the token is drawn from that
    residual. This is lossless. Where the released code draws the bonus token from softmax of the
    raw target logits (temperature 1; fixed upstream in 2025, PR #215), here it comes from the
    temperature-scaled p, so the output keeps the target's distribution. With sampling, a node's
    child ranks in `choices` must be contiguous from 0 (rank j is the j-th draw).
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

    def draft(self, state, root_logits, depth, tel, temperature=0.0, gen=None) -> Tree:
        tree, node, rows = Tree(), {(): -1}, {(): root_logits}
        for d in range(1, depth + 1):
            if d > 1:
                logits, _ = state.forward_tree(tree)
                tel["draft_forwards"] += 1
                rows.update({p: logits[node[p]] for p in self._paths if len(p) == d - 1 and p in node})
            for parent in sorted({p[:-1] for p in self._paths if len(p) == d and p[:-1] in node}):
                ranks = sorted(p[-1] for p in self._paths if p[:-1] == parent)
                children = self._children(rows[parent], ranks[-1] + 1, temperature, gen)
                for rank in (r for r in ranks if r < len(children)):  # fewer when q has fewer tokens
                    node[parent + (rank,)] = tree.add(node[parent], *children[rank])
        return tree

    @staticmethod
    def _children(logits, k: int, temperature: float, gen) -> list[tuple[int, torch.Tensor | None]]:
        """k children of a node: its top-k tokens (temperature 0, no q), or k draws without
        replacement from q = probs(logits, temperature), each with its conditional q_j."""
        if temperature <= 0:
            return [(int(t), None) for t in logits.topk(k).indices]
        q = probs(logits, temperature)
        out = []
        for token in torch.multinomial(q, min(k, int((q > 0).sum())), replacement=False, generator=gen).tolist():
            out.append((token, q / q.sum()))
            q = q.clone()
            q[token] = 0
        return out
