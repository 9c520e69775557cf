from __future__ import annotations

from dataclasses import dataclass, field

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.spec._common import CachedModel, append_accepted, decoding_loop, load_draft, probs
from harness.methods.spec._tree import expand, merge, tree_step


@register
@dataclass
class SpecInfer(LMMethod):
    """SpecInfer — Miao et al., "SpecInfer: Accelerating Large Language Model Serving with Tree-based
    Speculative Inference and Verification" (ASPLOS 2024, arXiv:2305.09781).

    Each draft model builds a token tree by expansion (level d gives every frontier node
    `expansion[d]` children: its top-k at temperature 0, k samples of its distribution q above),
    the drafts' trees are merged into one trie, and the target scores every node in one forward with
    a topology-aware mask and depth positions. Temperature 0 keeps the longest path that matches the
    target's argmax; above it, multi-step speculative sampling tries a node's sampled children in
    turn (accept x with min(1, p(x)/q(x)), else p <- norm(max(0, p − q))) and samples the last token
    from the final p, which leaves the output distributed exactly as the target's.

    drafts: draft models (same tokenizer), merged. expansion: children per level; the default
    ⟨1,1,3,1,1,1,1,1⟩ is the expansion configuration of the paper's evaluation (§6).
    """

    name = "specinfer"
    family = "spec"
    paper = "SpecInfer: Tree-based Speculative Inference and Verification (arXiv:2305.09781)"
    patches = frozenset({"decoding"})
    smoke_args = {"drafts": "{model}", "expansion": "2,1"}
    model_params = ("drafts",)
    drafts: tuple[str, ...] = field(default=("zoo:tiny-llama-draft",), metadata={"help": "draft models, merged"})
    expansion: tuple[int, ...] = field(default=(1, 1, 3, 1, 1, 1, 1, 1), metadata={"help": "children per level"})

    def __post_init__(self):
        if not self.drafts or not self.expansion or min(self.expansion) < 1:
            raise ValueError("specinfer needs at least one draft and positive expansion widths")

    def apply(self, lm, ctx):
        drafters = [load_draft(d, lm, self.name) for d in self.drafts]
        eos, tel = lm.tokenizer.eos_token_id, lm.telemetry

        def generate_one(prompt, max_new, temperature, gen):
            target, seq = CachedModel(lm.model), list(prompt)
            drafts = [CachedModel(d) for d in drafters]
            seq.append(int(probs(target.step(seq)[-1], temperature).multinomial(1, generator=gen)))
            tel["target_forwards"] += 1
            while len(seq) - len(prompt) < max_new and seq[-1] != eos:
                depth = min(len(self.expansion), max_new - (len(seq) - len(prompt)))
                tree = merge(
                    [expand(d, seq, self.expansion[:depth], temperature, gen, tel, probs, sample=True) for d in drafts]
                )
                accepted = tree_step(target, seq, tree, temperature, gen, tel, probs)[0]
                append_accepted(seq, accepted, eos, len(prompt) + max_new)
            return seq[len(prompt) :][:max_new]

        return decoding_loop(lm, generate_one)

    def check_effect(self, lm, ctx, result):
        return None if lm.telemetry["tree_nodes"] else "the drafts proposed no tree nodes"
