from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.spec._common import CachedModel, append_accepted, decoding_loop, load_draft, probs
from harness.methods.spec._tree import Tree, tree_forward, tree_step


@dataclass
class TokenGraph:
    """GSD's draft graph after the committed tokens (node -1 = the last committed token, `root`).
    `tree` holds the drafted nodes and their real parents (they form a tree: every node is drafted
    once); `pseudo[p]` lists the merge edges p -> existing node (the official code's pseudo-child)."""

    root: int
    repeat_threshold: int = 1
    tree: Tree = field(default_factory=Tree)
    children: dict[int, list[int]] = field(default_factory=dict)
    pseudo: dict[int, list[int]] = field(default_factory=dict)
    leaf: list[bool] = field(default_factory=list)

    def token(self, node: int) -> int:
        return self.root if node < 0 else self.tree.tokens[node]

    def repeat(self, token: int, parent: int) -> int | None:
        """An existing node off the parent's path with this token whose `repeat_threshold` preceding
        tokens equal those before the new one (check_repetition in gzhch/gsd); None when there is
        none or merging is off (-1). The root's parent counts as a mismatch, as in the code."""
        if self.repeat_threshold < 0 or parent < 0:
            return None
        on_path = set(self.tree.path(parent))
        for node, tok in enumerate(self.tree.tokens):
            if tok != token or node in on_path:
                continue
            a, b = parent, self.tree.parents[node]
            for _ in range(self.repeat_threshold):
                if a is None or b is None or self.token(a) != self.token(b):
                    break
                a, b = (None if a < 0 else self.tree.parents[a]), (None if b < 0 else self.tree.parents[b])
            else:
                return node
        return None

    def add(self, parent: int, token: int, leaf: bool) -> int | None:
        """Draft token under parent, or add a merge edge to a repeated node (then None: its subtree
        is reused, not drafted again)."""
        same = self.repeat(token, parent)
        if same is not None:
            self.pseudo.setdefault(parent, []).append(same)
            return None
        node = self.tree.add(parent, token, merge=False)
        self.children.setdefault(parent, []).append(node)
        self.leaf.append(leaf)
        return node

    def unroll(self, max_nodes: int) -> tuple[Tree, set[int]]:
        """The verification tree: breadth-first from the root, a node's children then its merge
        targets, each copied with its subtree (depth = parent's + 1), at most max_nodes nodes.
        Returns the tree and the indices of nodes reached through a merge edge."""
        out, merged, queue = Tree(), set(), [(-1, -1, False)]
        for node, at, via in queue:
            for child, is_pseudo in [(c, False) for c in self.children.get(node, [])] + [
                (c, True) for c in self.pseudo.get(node, [])
            ]:
                if len(out) >= max_nodes:
                    return out, merged
                k = out.add(at, self.tree.tokens[child], merge=False)
                if via or is_pseudo:
                    merged.add(k)
                queue.append((child, k, via or is_pseudo))
        return out, merged


@register
@dataclass
class GSD(LMMethod):
    """Graph-structured speculative decoding — Gong et al., "Graph-Structured Speculative Decoding"
    (Findings of ACL 2024, arXiv:2407.16207), following the official code (gzhch/gsd,
    utils/graph_decoding.py, graph_speculative_generation_dev).

    Drafting: level by level (one draft forward over the graph so far, tree mask, depth positions),
    every node added at the previous level proposes its top-n tokens; a token is kept if its draft
    probability is at least sibling_threshold x the best sibling's. If the token equals an existing
    node off the current path whose repeat_threshold preceding tokens also match, the parent gets an
    edge to that node instead (a merge: the node's subtree is shared, not drafted again), which makes
    the drafts a DAG. A node is a leaf if its probability is below prob_threshold or its parent is a
    leaf; drafting stops when a level adds no non-leaf node, or after max_depth levels.
    Verification: the DAG is unrolled breadth-first into a token tree of at most max_nodes nodes
    (a shared node is copied under each parent: a node's target keys depend on its whole path, so
    exact verification cannot share them) and the target scores it in one forward (the shared tree
    verification of SpecInfer). Temperature 0 keeps the longest path matching the target's argmax
    plus the target's next token: output identical to greedy decoding.

    Simplified / changed vs the code: a parent keeps every merge edge (the code keeps only the last
    one, `pseudo_child`); drafting also stops once the graph holds max_nodes nodes (deeper nodes
    could not enter the unrolled tree). The merge saves draft work; the target still verifies the
    unrolled tree. Temperature > 0: the code's sampling mode (accept a child with min(1, p/q) in a
    depth-first search, keep the longest path) does not preserve the target's distribution, so it is
    not used; the drafted top-n children are verified instead with the family's lossless rule for
    deterministic candidates (try a parent's children in order, accept x with p(x), else zero p(x)
    and renormalise; the last token from the final p — EAGLE's evaluate_posterior, _tree.verify_tree).

    draft: the draft model (same tokenizer). n: top-n proposals per node (code: 4).
    sibling_threshold, prob_threshold, repeat_threshold: the code's sweeps are 0.1-0.4, 0.3/0.4 and
    0/1 (-1 disables merging); no default is published, the values here are picks from those sweeps.
    max_depth: draft levels (the code's max_step_draft; its value is not in the released config).
    max_nodes: the unrolled tree's size cap (code: 100).
    """

    name = "gsd"
    family = "spec"
    paper = "Graph-Structured Speculative Decoding (arXiv:2407.16207)"
    patches = frozenset({"decoding"})
    smoke_args = {"draft": "{model}", "max_depth": "3", "max_nodes": "12"}
    model_params = ("draft",)
    draft: str = field(default="zoo:tiny-llama-draft", metadata={"help": "draft model (same tokenizer)"})
    n: int = field(default=4, metadata={"help": "top-n draft proposals per node"})
    sibling_threshold: float = field(default=0.2, metadata={"help": "keep p >= this x best sibling p"})
    prob_threshold: float = field(default=0.3, metadata={"help": "p below it makes a leaf"})
    repeat_threshold: int = field(default=1, metadata={"help": "preceding tokens a merge must match; -1: no merging"})
    max_depth: int = field(default=8, metadata={"help": "draft levels"})
    max_nodes: int = field(default=100, metadata={"help": "nodes of the unrolled verification tree"})
    ranges = {  # checked by params.build before any model loads
        "n": "[1, inf)",
        "sibling_threshold": "[0, 1]",
        "prob_threshold": "[0, 1]",
        "repeat_threshold": "[-1, inf)",
        "max_depth": "[1, inf)",
        "max_nodes": "[1, inf)",
    }

    def __post_init__(self):
        if min(self.n, self.max_depth, self.max_nodes) < 1 or self.repeat_threshold < -1:
            raise ValueError("gsd needs n, max_depth and max_nodes >= 1 and repeat_threshold >= -1")
        if not (0 <= self.sibling_threshold <= 1 and 0 <= self.prob_threshold <= 1):
            raise ValueError("gsd thresholds must lie in [0, 1]")

    def draft_graph(self, draft: CachedModel, seq: list[int], depth: int, tel) -> TokenGraph:
        """The draft DAG after seq; the draft's cache is cut back to seq afterwards."""
        graph, frontier = TokenGraph(seq[-1], self.repeat_threshold), [-1]
        for _ in range(depth):
            tail = seq[draft.length :]
            logits = tree_forward(draft, tail, graph.tree)
            tel["draft_forwards"] += 1
            draft.crop(len(seq))
            new = []
            for parent in frontier:
                row = logits[len(tail) + parent]  # parent -1: the tail's last row
                top = torch.softmax(row.float(), -1).topk(self.n)
                best = float(top.values[0])
                for p, x in zip(top.values.tolist(), top.indices.tolist()):
                    if p < self.sibling_threshold * best:
                        continue
                    leaf = p < self.prob_threshold or (parent >= 0 and graph.leaf[parent])
                    node = graph.add(parent, x, leaf)
                    if node is not None:
                        new.append(node)
            frontier = new
            if all(graph.leaf[j] for j in new) or len(graph.tree) >= self.max_nodes:
                break
        tel["graph_nodes"] += len(graph.tree)
        tel["merge_edges"] += sum(map(len, graph.pseudo.values()))
        return graph

    def apply(self, lm, ctx):
        drafter = load_draft(self.draft, lm, self.name)
        eos, tel = lm.tokenizer.eos_token_id, lm.telemetry

        def generate_one(prompt, max_new, temperature, gen):
            target, draft, seq = CachedModel(lm.model), CachedModel(drafter), list(prompt)
            seq.append(int(probs(target.step(seq)[-1], temperature).multinomial(1, generator=gen)))
            tel["target_forwards"] += 1
            while len(seq) - len(prompt) < max_new and seq[-1] != eos:
                graph = self.draft_graph(draft, seq, min(self.max_depth, max_new - (len(seq) - len(prompt))), tel)
                tree, merged = graph.unroll(self.max_nodes)
                new, path = tree_step(target, seq, tree, temperature, gen, tel, probs)
                tel["merged_path_steps"] += any(j in merged for j in path)  # the graph's gain (code: graph_success)
                append_accepted(seq, new, eos, len(prompt) + max_new)
            return seq[len(prompt) :][:max_new]

        return decoding_loop(lm, generate_one)

    def check_effect(self, lm, ctx, result):
        return None if lm.telemetry["tree_nodes"] else "the draft proposed no graph nodes"
