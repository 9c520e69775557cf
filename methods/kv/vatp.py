from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._run import Run
from harness.methods.kv.h2o import evict_heavy_recent


def vatp_scores(lc: LayerCache, a: int = 0, b: int | None = None):
    """I_j = S_j · ‖v_j‖₁ (S: accumulated attention) of slots a..b-1."""
    return lc.score[:, :, a:b] * value_l1(lc)[:, :, a:b]


def value_l1(lc: LayerCache):
    """‖v_j‖₁ per slot [1, H_kv, n], kept with its token: computed once, for the slots appended
    since the last call or eviction (`value_l1_from` records where they start)."""
    norms, first = lc.slot("value_l1"), lc.state.get("value_l1_from", 0)
    if first < lc.n:
        norms[:, :, first:] = lc.v[:, :, first:].abs().sum(-1)
        lc.state["value_l1_from"] = lc.n
    return norms


def evicted(lc: LayerCache) -> None:
    lc.state["value_l1_from"] = lc.n


@register
@dataclass
class VATP(KVMethod):
    """VATP — Guo et al. 2024, "Attention Score is not All You Need for Token Importance Indicator
    in KV Cache Reduction: Value Also Matters" (arXiv:2406.12335, EMNLP 2024); no official code,
    rule from the paper.

    Token importance I_j = S_j · ‖v_j‖₁, with S_j H2O's accumulated attention (the paper's main
    base score), on H2O's recent + heavy split of the budget; the first `n_sink` tokens (attention
    sinks: high attention, tiny ‖v‖) are always kept, as the paper prescribes. Compresses:
    prefill and every decoding step."""

    name = "vatp"
    paper = (
        "Attention Score is not All You Need for Token Importance Indicator in KV Cache Reduction: "
        "Value Also Matters (arXiv:2406.12335)"
    )
    compresses = "both"
    accumulates = True
    all_layers = True
    ranges = {"heavy_share": "[0, 1]", "n_sink": "[0, inf)"}  # checked by params.build before any model loads
    budget: float = field(default=0.2, metadata={"help": "kept tokens (H2O's default split 0.1 + 0.1)"})
    heavy_share: float = 0.5
    n_sink: int = field(default=4, metadata={"help": "attention-sink tokens always kept"})

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        self.compress_decode(lc, run)

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        if lc.n > run.target:
            evict_heavy_recent(lc, run.target, self.heavy_share, lambda a, b: vatp_scores(lc, a, b), lead=self.n_sink)
            evicted(lc)
