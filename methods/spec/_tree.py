"""Token-tree verification shared by SpecInfer, EAGLE, EAGLE-2 and REST: every draft node is
scored by the target in one forward with a topology-aware attention mask (a node attends to the
cached prefix, the uncached tail and its own ancestors) and position = tail end + depth; the
cache then keeps only the accepted path, so no second target pass is needed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Tree:
    """Draft nodes in topological order (a parent before its children; -1 = the last committed
    token). attempts[parent] lists (node, q) in the order verification tries them: q is the draft
    distribution the node was sampled from (SpecInfer's multi-step speculative sampling) or None for
    a deterministic pick (top-k, retrieval), verified with q treated as 1 as EAGLE's code does."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    attempts: dict[int, list[tuple[int, torch.Tensor | None]]] = field(default_factory=dict)

    def add(self, parent: int, token: int, q: torch.Tensor | None = None, merge: bool = True) -> int:
        """Add token under parent (an existing identical child is reused when merge) and record one
        verification attempt of it; returns the node index."""
        node = next((n for n, _ in self.attempts.get(parent, []) if self.tokens[n] == token), None) if merge else None
        if node is None:
            node = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(parent)
        self.attempts.setdefault(parent, []).append((node, q))
        return node

    def depths(self) -> list[int]:
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return out

    def path(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def __len__(self) -> int:
        return len(self.tokens)


def tree_mask(parents: list[int]) -> torch.Tensor:
    """[N, N] bool: node i may attend to node j iff j is i or an ancestor of i."""
    n = len(parents)
    anc = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            anc[i] |= anc[p]
    return anc


@torch.no_grad()
def tree_forward(target, tail: list[int], tree: Tree) -> torch.Tensor:
    """One target forward over tail (uncached committed tokens, the last one included) plus the
    tree. Returns logits [len(tail) + N, V]: row len(tail) − 1 after the tail's last token, row
    len(tail) + j after node j."""
    L0, m, n = target.length, len(tail), len(tree)
    dev = target.model.device
    allowed = torch.zeros(m + n, L0 + m + n, dtype=torch.bool)
    allowed[:, :L0] = True
    allowed[:m, L0 : L0 + m] = torch.tril(torch.ones(m, m, dtype=torch.bool))
    allowed[m:, L0 : L0 + m] = True
    allowed[m:, L0 + m :] = tree_mask(tree.parents)
    dtype = next(target.model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    pos = torch.tensor(list(range(L0, L0 + m)) + [L0 + m - 1 + d for d in tree.depths()], device=dev)
    ids = torch.tensor([tail + tree.tokens], device=dev)
    out = target.model(
        input_ids=ids,
        attention_mask=mask[None, None].to(dev),
        past_key_values=target.cache,
        use_cache=True,
        position_ids=pos[None],
        cache_position=torch.arange(L0, L0 + m + n, device=dev),
    )
    target.length = L0 + m + n
    return out.logits[0]


def keep_path(target, committed: int, path: list[int]) -> None:
    """Drop rejected tree nodes from the target's cache: keep the first `committed` entries and the
    accepted path's nodes (their keys were rotated at their depth positions = their final ones)."""
    idx = torch.tensor(list(range(committed)) + [committed + j for j in path], device=target.model.device)
    for layer in target.cache.layers:
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)
    target.length = len(idx)


def verify_tree(p: torch.Tensor, tree: Tree, temperature: float, generator=None) -> tuple[list[int], list[int]]:
    """Walk the tree from the root with the target distributions p [1 + N, V] (row 0: after the
    tail). Temperature 0: follow the child equal to the target's argmax (the longest matching
    path). Otherwise try a node's children in order: a sampled child x ~ q is accepted with
    min(1, p(x)/q(x)), else p <- norm(max(0, p − q)) (SpecInfer's multi-step speculative sampling);
    a deterministic child is accepted with probability p(x), else p(x) <- 0 and p is renormalised
    (EAGLE's evaluate_posterior). The last token is sampled from the final p. Both keep the output
    distributed exactly as the target's. Returns (accepted path node indices, new tokens)."""
    path, cur, dist = [], -1, p[0]
    while True:
        accepted = None
        for node, q in tree.attempts.get(cur, []):
            x = tree.tokens[node]
            if temperature <= 0:
                if int(dist.argmax()) == x:
                    accepted = node
                    break
                continue
            if q is None:
                if torch.rand((), generator=generator) < dist[x] / dist.sum():
                    accepted = node
                    break
                dist = dist.clone()
                dist[x] = 0
            else:
                if torch.rand((), generator=generator) < torch.clamp(dist[x] / q[x], max=1.0):
                    accepted = node
                    break
                residual = torch.clamp(dist - q, min=0)
                dist = residual if residual.sum() > 0 else dist
            dist = dist / dist.sum()
        if accepted is None:
            break
        path.append(accepted)
        cur, dist = accepted, p[1 + accepted]
    last = int(dist.argmax()) if temperature <= 0 else int(torch.multinomial(dist / dist.sum(), 1, generator=generator))
    return path, [tree.tokens[j] for j in path] + [last]


def tree_step(
    target, seq: list[int], tree: Tree, temperature: float, gen, tel, probs, verify=None
) -> tuple[list[int], list[int]]:
    """Verify a draft tree after seq (committed tokens; the target caches all but the last ones)
    in one forward, keep the accepted path in the cache, count telemetry. verify(p, tree,
    temperature, gen) -> (path, new tokens) replaces `verify_tree` when given. Returns (new tokens,
    accepted path node indices)."""
    tail = seq[target.length :]
    logits = tree_forward(target, tail, tree)[len(tail) - 1 :]
    tel["target_forwards"] += 1
    path, new = (verify or verify_tree)(probs(logits, temperature), tree, temperature, gen)
    keep_path(target, len(seq), path)
    tel["tree_nodes"] += len(tree)
    tel["accepted_draft_tokens"] += len(path)
    tel["spec_steps"] += 1
    for i, node in enumerate([-1] + path, start=1):  # per-depth acceptance: depth i tried / passed
        if tree.attempts.get(node):
            tel[f"tested_at_{i}"] += 1
            tel[f"accepted_at_{i}"] += i <= len(path)
    return new, path


def expand(draft, seq: list[int], widths, temperature: float, gen, tel, probs, sample: bool) -> Tree:
    """A draft model's token tree after seq: level d expands every frontier node into widths[d]
    children, its top-k tokens (sample=False) or k i.i.d. samples of q (sample=True, q kept for
    multi-step speculative sampling). One draft forward per level over the tree so far (tree mask),
    after which the draft's cache is cut back to seq."""
    tree, frontier = Tree(), [-1]
    for width in widths:
        tail = seq[draft.length :]
        logits = tree_forward(draft, tail, tree)
        tel["draft_forwards"] += 1
        draft.crop(len(seq))
        rows = {j: logits[len(tail) + j] for j in range(len(tree))}
        if tail:  # level 0 (the tail is never empty there: seq grew since the last step)
            rows[-1] = logits[len(tail) - 1]
        new = []
        for parent in frontier:
            q = probs(rows[parent], temperature)
            if sample and temperature > 0:
                picks = torch.multinomial(q, width, replacement=True, generator=gen).tolist()
                new += [tree.add(parent, x, q) for x in picks]
            else:
                new += [tree.add(parent, x) for x in rows[parent].topk(width).indices.tolist()]
        frontier = new
    return tree


def merge(trees: list[Tree]) -> Tree:
    """One verification tree from several drafts' trees (a trie of their paths); every attempt is
    kept in order, so a token two drafts proposed is tried once per proposal."""
    out = Tree()
    for t in trees:
        where: dict[int, int] = {-1: -1}
        for parent, tries in sorted(t.attempts.items()):
            for node, q in tries:
                where[node] = out.add(where[parent], t.tokens[node], q)
    return out
