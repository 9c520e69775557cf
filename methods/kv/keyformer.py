from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._eviction import group_sum
from harness.methods.kv._run import Run
from harness.methods.kv.h2o import evict_heavy_recent


def gumbel_probs(logits: torch.Tensor, tau: float, generator) -> torch.Tensor:
    """softmax((x + ζ)/τ) with ζ ~ Gumbel(0, 1) (torch's gumbel_softmax, hard=False, seeded)."""
    z = torch.rand(logits.shape, generator=generator).to(logits.device)
    z.clamp_(1e-20, 1.0).log_().neg_().clamp_(min=1e-20).log_().neg_()  # ζ, in place
    z += logits
    if tau != 1:
        z /= tau
    return torch.softmax(z, dim=-1)


@register
@dataclass
class Keyformer(KVMethod):
    """Keyformer — Adnan et al. 2024, "Keyformer: KV Cache Reduction through Key Tokens Selection
    for Efficient Generative Inference" (arXiv:2403.09054, MLSys 2024); rule from
    d-matrix-ai/keyformer-llm `modeling_*.py` and `conversation/dialogue.py`.

    Score: f(x_j) = softmax((x_j + ζ_j)/τ) on the pre-softmax logits with Gumbel noise ζ,
    accumulated over the KV head's queries and across steps; τ rises linearly from τ_init = 1 to
    τ_end = 2 over the decoding steps (τ_delta = (τ_end − τ_init)/max_new_tokens). The budget
    keeps `recent_share` (official example 30 %) newest tokens and the top-scoring "key tokens".
    Compresses: prefill and every decoding step. The noise is seeded (the run's generator)."""

    name = "keyformer"
    paper = "Keyformer: KV Cache Reduction through Key Tokens Selection for Efficient Generative Inference (arXiv:2403.09054)"
    compresses = "both"
    accumulates = True
    all_layers = True
    ranges = {
        "recent_share": "[0, 1]",
        "tau_init": "(0, inf)",
        "tau_end": "(0, inf)",
    }  # checked by params.build before any model loads
    budget: float = field(default=0.6, metadata={"help": "kept tokens (official example: kv_cache 60 % of the prompt)"})
    recent_share: float = field(default=0.3, metadata={"help": "newest tokens' share of the budget (official 30 %)"})
    tau_init: float = 1.0
    tau_end: float = 2.0

    def tau(self, run: Run) -> float:
        if run.phase == "prefill" or not run.max_new:
            return self.tau_init
        return self.tau_init + run.step * (self.tau_end - self.tau_init) / run.max_new

    def observe(self, lc: LayerCache, probs, logits, run: Run) -> None:
        lc.add_score(group_sum(gumbel_probs(logits, self.tau(run), run.generator)))

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        evict_heavy_recent(lc, run.target, 1 - self.recent_share)

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        evict_heavy_recent(lc, run.target, 1 - self.recent_share)
