"""EAGLE-2's dynamic tree against a transcription of the official `topK_genrate`
(SafeAILab/EAGLE@bfeb532 eagle/model/cnets.py) and its defaults against the official settings."""

from collections import Counter

import pytest
import torch

from harness.methods.spec.eagle2 import Eagle2

VOCAB = 40


def logits_for(path: tuple[int, ...]) -> torch.Tensor:
    """Fixed, peaked draft logits after a path of tokens (the same for the method and the reference)."""
    gen = torch.Generator().manual_seed(hash(path) % 2**31)
    return torch.randn(VOCAB, generator=gen, dtype=torch.float64).float() * 3


class PathState:
    """Stands in for the head: logits of every node of the fed tree, from the node's token path."""

    def forward_tree(self, tree):
        rows = [logits_for(tuple(tree.tokens[n] for n in tree.path(i))) for i in range(len(tree))]
        return torch.stack(rows), None


def official_topk_genrate(total_token: int, depth: int, top_k: int) -> set[tuple[int, ...]]:
    """cnets.py topK_genrate on token paths: self.total_tokens = total_token - 1; the root's top_k;
    `for i in range(depth)`: every frontier node's top_k children scored cu = parent score + log p,
    topk over the k² cu as next frontier, every cu appended to scores_list; then topk(scores_list,
    total_tokens) are the draft tokens."""
    total_tokens = total_token - 1
    top = torch.log_softmax(logits_for(()), -1).topk(top_k)
    scores, frontier = top.values, [(t,) for t in top.indices.tolist()]
    scores_list, ss_paths = [scores], [list(frontier)]
    for _ in range(depth):
        cu_scores, paths = [], []
        for path, score in zip(frontier, scores.tolist()):
            top = torch.log_softmax(logits_for(path), -1).topk(top_k)
            cu_scores += [score + v for v in top.values.tolist()]
            paths += [path + (t,) for t in top.indices.tolist()]
        cu_scores = torch.tensor(cu_scores)
        topk_cs_index = cu_scores.topk(top_k).indices
        scores, frontier = cu_scores[topk_cs_index], [paths[j] for j in topk_cs_index.tolist()]
        scores_list.append(cu_scores)
        ss_paths.append(paths)
    every = [p for level in ss_paths for p in level]
    return {every[j] for j in torch.cat(scores_list).topk(total_tokens).indices.tolist()}


def test_defaults_are_the_official_eval_settings():
    """anchors-scale.md §7: EAGLE-2 eval scripts and Spec-Bench inference_eagle2.py use
    --total-token 60 --depth 5 --top-k 10."""
    method = Eagle2()
    assert (method.total_tokens, method.depth, method.top_k) == (60, 5, 10)
    assert method.max_depth == 6  # the root's children plus five expansion rounds


@pytest.mark.fidelity(
    "eagle2",
    reference="transcription of the official topK_genrate (SafeAILab/EAGLE@bfeb532 cnets.py)",
    tolerance="exact tree",
)
@pytest.mark.parametrize("total_token,depth,top_k", [(60, 5, 10), (12, 4, 3), (30, 7, 4)])
def test_dynamic_tree_equals_the_official_topk_genrate(total_token, depth, top_k):
    method, tel = Eagle2(total_tokens=total_token, depth=depth, top_k=top_k), Counter()
    tree = method.draft(PathState(), logits_for(()), method.max_depth, tel)
    paths = {tuple(tree.tokens[n] for n in tree.path(i)) for i in range(len(tree))}
    want = official_topk_genrate(total_token, depth, top_k)
    assert len(tree) == total_token - 1 and paths == want
    assert max(tree.depths()) == max(map(len, want))
    assert tel["draft_forwards"] == depth  # one head forward per expansion round
