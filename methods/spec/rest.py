from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from harness import data
from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.spec._common import CachedModel, append_accepted, decoding_loop, probs
from harness.methods.spec._tree import Tree, tree_step, verify_tree
from harness.synthetic import Corpus

DATASTORE_SEED = 515151  # a training-side seed (< EVAL_SEED_BASE): the datastore never holds evaluation text


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array by prefix doubling (Manber-Myers with numpy sorts): O(n log² n)."""
    n = len(tokens)
    rank = np.unique(tokens, return_inverse=True)[1].astype(np.int64)
    sa, k = np.arange(n), 1
    while True:
        second = np.full(n, -1, dtype=np.int64)
        second[: n - k] = rank[k:] if k < n else second[:0]
        sa = np.lexsort((second, rank))
        key = np.stack([rank[sa], second[sa]], 1)
        new = np.empty(n, dtype=np.int64)
        new[sa] = np.concatenate([[0], np.cumsum(np.any(key[1:] != key[:-1], axis=1))])
        rank = new
        if rank.max() == n - 1 or k >= n:
            return sa
        k *= 2


class Datastore:
    """Token ids of a corpus and their suffix array: all occurrences of a query are one contiguous
    range of the array, found by binary search."""

    def __init__(self, tokens: list[int]):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.sa = suffix_array(self.tokens)

    def _bound(self, query: list[int], upper: bool) -> int:
        lo, hi, q = 0, len(self.sa), list(query)
        while lo < hi:
            mid = (lo + hi) // 2
            start = self.sa[mid]
            head = self.tokens[start : start + len(q)].tolist()
            if head < q or (upper and head == q):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def occurrences(self, query: list[int]) -> np.ndarray:
        """Start positions of every occurrence of query."""
        return self.sa[self._bound(query, False) : self._bound(query, True)]

    def lookup(self, context: list[int], max_span: int, length: int, cap: int) -> tuple[int, list[list[int]]]:
        """REST's retrieval: the longest suffix of context (max_span down to 2 tokens) that occurs in
        the corpus, and the `length` tokens after each of its occurrences (at most `cap`, evenly
        spread over the suffix-array range). (0, []) when not even 2 tokens match: no draft."""
        for span in range(min(max_span, len(context)), 1, -1):
            hits = self.occurrences(context[-span:])
            hits = hits[hits + span < len(self.tokens)]
            if len(hits):
                if len(hits) > cap:
                    hits = hits[np.linspace(0, len(hits) - 1, cap).round().astype(int)]
                return span, [self.tokens[h + span : h + span + length].tolist() for h in hits]
        return 0, []


def draft_tree(continuations: list[list[int]], num_draft: int) -> Tree:
    """Trie of the retrieved continuations; keep the num_draft nodes that most continuations pass
    through (a parent is never rarer than its child, and ties keep the shallower node first)."""
    counts: Counter = Counter()
    for c in continuations:
        for d in range(1, len(c) + 1):
            counts[tuple(c[:d])] += 1
    keep = sorted(counts, key=lambda pre: (-counts[pre], len(pre), pre))[:num_draft]
    tree, index = Tree(), {(): -1}
    for pre in sorted(keep, key=lambda pre: (len(pre), -counts[pre], pre)):
        index[pre] = tree.add(index[pre[:-1]], pre[-1])
    return tree


def nucleus(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """p restricted to its top-p nucleus (the most probable tokens until their mass exceeds top_p,
    the first always kept) and renormalised, row-wise; top_p = 1 keeps p."""
    if top_p >= 1:
        return p
    sorted_p, order = torch.sort(p, dim=-1, descending=True)
    drop = torch.cumsum(sorted_p, dim=-1) > top_p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    kept = p.masked_fill(drop.scatter(-1, order, drop), 0.0)
    return kept / kept.sum(-1, keepdim=True)


def sample_and_match(top_p: float):
    """REST's released sampling verification (rest/model/utils.py `evaluate_posterior` with
    `get_nucleus_posterior_mask`): every root-to-leaf candidate draws its own token at each of its
    positions from the nucleus of the target's distribution there and keeps the prefix where the
    draws equal its tokens; the longest kept prefix wins (the first on ties); the next token is
    drawn afresh from the nucleus after it. Not the target's distribution: a rejected draft token
    can still come back in that fresh draw."""

    def verify(p, tree: Tree, temperature: float, generator=None) -> tuple[list[int], list[int]]:
        if temperature <= 0:
            return verify_tree(p, tree, temperature, generator)
        nuc = nucleus(p, top_p)
        parents = set(tree.parents)
        best: list[int] = []
        for leaf in (n for n in range(len(tree)) if n not in parents):
            path = tree.path(leaf)
            rows = nuc[[0] + [1 + j for j in path[:-1]]]
            draws = torch.multinomial(rows, 1, generator=generator)[:, 0].tolist()
            n = next((i for i, (d, j) in enumerate(zip(draws, path)) if d != tree.tokens[j]), len(path))
            if n > len(best):
                best = path[:n]
        last = int(torch.multinomial(nuc[1 + best[-1] if best else 0], 1, generator=generator))
        return best, [tree.tokens[j] for j in best] + [last]

    return verify


@register
@dataclass
class REST(LMMethod):
    """REST — He et al., "REST: Retrieval-Based Speculative Decoding" (NAACL 2024, arXiv:2311.08252);
    defaults from FasterDecoding/REST (max_token_span 16, num_draft 64).

    No draft model: the longest suffix of the context (16 tokens down) that occurs in a datastore
    (suffix array over a tokenised corpus) retrieves the tokens that followed it; their trie's
    `num_draft` most frequent nodes form a draft tree, verified by the target in one pass with tree
    attention (greedy: the longest match).

    Sampling (`acceptance`): the released code (FasterDecoding/REST rest/model/utils.py
    `evaluate_posterior`, `get_nucleus_posterior_mask`; README: temperature 0.7-0.8, top-p
    0.8-0.95) draws a token per tree position from the temperature-scaled top-p nucleus of the
    target and accepts a draft token iff it equals the draw; the longest accepted candidate wins
    and the next token is drawn afresh. That rule ("official", with `top_p`, code default 0.8) does
    not keep the target's distribution: a rejected draft token gets a second chance in the fresh
    draw, and the nucleus truncates p. The default "exact" treats retrieved tokens as deterministic
    picks with q = 1 (accept x with probability p(x), else zero it and renormalise; EAGLE's
    evaluate_posterior), which keeps the target's distribution, as the spec_acceptance task
    requires of the speculative family (it fails a cell whose sampled tokens do not follow p).
    Greedy decoding is the same under both.

    corpus: "synthetic" (`datastore_sentences` of training-side synthetic text) or a local text
    file. continuation: tokens kept after each occurrence (this project's choice; REST bounds
    drafts by its tree budget). max_matches: occurrences read per lookup (this project's choice).
    """

    name = "rest"
    family = "spec"
    paper = "REST: Retrieval-Based Speculative Decoding (arXiv:2311.08252)"
    patches = frozenset({"decoding"})
    smoke_args = {"datastore_sentences": "200", "num_draft": "8"}
    ranges = {
        "datastore_sentences": "[1, inf)",
        "max_token_span": "[1, inf)",
        "num_draft": "[1, inf)",
        "continuation": "[1, inf)",
        "max_matches": "[1, inf)",
        "top_p": "(0, 1]",
    }  # checked by params.build before any model loads
    corpus: str = field(default="synthetic", metadata={"help": "'synthetic' or a local UTF-8 text file"})
    datastore_sentences: int = 20000
    max_token_span: int = 16
    num_draft: int = 64
    continuation: int = 8
    max_matches: int = 512
    acceptance: str = field(
        default="exact", metadata={"help": "exact (lossless) or official (REST's sample-and-match)"}
    )
    top_p: float = field(default=0.8, metadata={"help": "nucleus of the official acceptance (REST code default 0.8)"})

    def __post_init__(self):
        if min(self.datastore_sentences, self.max_token_span, self.num_draft, self.continuation, self.max_matches) < 1:
            raise ValueError(
                "datastore_sentences, max_token_span, num_draft, continuation and max_matches must be positive"
            )
        if self.acceptance not in ("exact", "official"):
            raise ValueError("acceptance must be exact or official")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    def datastore(self, lm) -> Datastore:
        text = (
            Corpus(DATASTORE_SEED).text(self.datastore_sentences)
            if self.corpus == "synthetic"
            else data.read_text(self.corpus, "rest corpus")
        )
        self._corpus_hash = hashlib.sha256(text.encode()).hexdigest()
        return Datastore(lm.encode(text))

    def resolved(self, lm, ctx) -> dict:
        return {"corpus_sha256": getattr(self, "_corpus_hash", None)}

    def apply(self, lm, ctx):
        store = self.datastore(lm)
        eos, tel = lm.tokenizer.eos_token_id, lm.telemetry
        tel["datastore_tokens"] = len(store.tokens)

        official = self.acceptance == "official"
        verify = sample_and_match(self.top_p) if official else None

        def generate_one(prompt, max_new, temperature, gen):
            target, seq = CachedModel(lm.model), list(prompt)
            p0 = probs(target.step(seq)[-1], temperature)
            seq.append(
                int((nucleus(p0, self.top_p) if official and temperature > 0 else p0).multinomial(1, generator=gen))
            )
            tel["target_forwards"] += 1
            while len(seq) - len(prompt) < max_new and seq[-1] != eos:
                room = max_new - (len(seq) - len(prompt))
                span, found = store.lookup(seq, self.max_token_span, min(self.continuation, room), self.max_matches)
                tel["retrievals"] += 1
                tel["retrieved_span_tokens"] += span
                tree = draft_tree(found, self.num_draft)
                accepted = tree_step(target, seq, tree, temperature, gen, tel, probs, verify)[0]
                append_accepted(seq, accepted, eos, len(prompt) + max_new)
            return seq[len(prompt) :][:max_new]

        return decoding_loop(lm, generate_one)

    def check_effect(self, lm, ctx, result):
        # a lookup without a 2-token match leaves that step without a draft, as in REST's own code;
        # the method acted when it queried the datastore (tree_nodes counts what it retrieved)
        return None if lm.telemetry["retrievals"] else "the decoding loop never queried the datastore"
