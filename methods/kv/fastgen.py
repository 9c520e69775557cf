from __future__ import annotations

import string
from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._eviction import recent, window_attention
from harness.methods.kv._run import Run

_VOCAB_CLASSES: dict = {}  # tokenizer id -> (special-token mask, punctuation mask) over the vocabulary
POLICIES = ("special", "special+punct", "special+punct+frequency", "special+punct+frequency+local")


def candidate_masks(
    special: torch.Tensor, punct: torch.Tensor, freq_score: torch.Tensor, is_recent: torch.Tensor, heavy: int, m: int
) -> list[torch.Tensor]:
    """FastGen's nested policies as bool masks [1, H, n], cheapest first; frequency adds the
    `heavy` top-scored tokens, local the newest, each policy capped at m tokens per head."""
    base = special | punct
    masks = [special, base]
    ranked = freq_score.masked_fill(base, float("-inf"))
    for extra, size in ((None, heavy), (is_recent, m)):
        prev = masks[-1]
        if extra is not None:  # the local window, then heavy hitters fill up to the cap
            ranked = ranked.masked_fill(extra, float("inf"))
        room = (size - prev.sum(-1, keepdim=True)).clamp(min=0)
        # ties (the local window's +inf, equal scores) go to the newest slot, on every device
        n = ranked.shape[-1]
        order = (n - 1) - ranked.masked_fill(prev, float("-inf")).flip(-1).argsort(dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(
            -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
        )
        masks.append(prev | ((rank < room) & (ranked.masked_fill(prev, float("-inf")) > float("-inf"))))
    return [_cap(mk, m, freq_score) for mk in masks]


def _cap(mask: torch.Tensor, m: int, score: torch.Tensor) -> torch.Tensor:
    """At most m tokens per head: the highest-scoring ones of the mask."""
    over = mask.sum(-1) > m
    if not over.any():
        return mask
    s = score.masked_fill(~mask, float("-inf"))
    top = s.topk(m, dim=-1).indices
    capped = torch.zeros_like(mask).scatter(-1, top, True)
    return torch.where(over.unsqueeze(-1), capped, mask)


@register
@dataclass
class FastGen(KVMethod):
    """FastGen — Ge et al. 2024, "Model Tells You What to Discard: Adaptive KV Cache Compression for
    LLMs" (arXiv:2310.01801, ICLR 2024); no official code, rule from the paper and community
    cold-compress (`KVCacheHybrid`, `cache_configs/fastgen.yaml`: heavy_hitter_frac 0.3,
    recent_window 0.3, global_tokens 4, min_recovery_frac 0.9).

    Profiling at prefill, per KV head: the ordered policies C_special (the first global_tokens
    and special tokens) → +punctuation → +frequency (heavy hitters by accumulated attention) →
    +local (recent window); each head takes the first whose masked attention keeps ≥
    `min_recovery` of the attention mass. Under a budget every policy is capped at the budget
    (frequency at heavy_hitter_frac of it, local filling the rest); a head that no policy
    satisfies takes the last (cold-compress's fallback), never the full cache. Heads keep
    different counts (masked slots), so the kept fraction is at most the budget ("cap"). The
    profile uses the last `profile_window` queries' attention (SDPA-compatible) rather than the
    full prefill matrix [our choice, as SnapKV's window]. While decoding each head keeps applying
    its policy to the cache with the new tokens (the paper's generation phase): a "special" head
    keeps only special tokens, "+punct" also punctuation, "+frequency" the top heavy hitters by
    accumulated attention (H2O's score, over every query so far), "+local" the moving recent
    window; all capped at the budget. Compresses: prefill and every decoding step."""

    name = "fastgen"
    paper = "Model Tells You What to Discard: Adaptive KV Cache Compression for LLMs (arXiv:2310.01801)"
    compresses = "both"
    budget_unit = "cap"
    ranges = {
        "min_recovery": "(0, 1]",
        "heavy_hitter_frac": "[0, 1]",
        "global_tokens": "[0, inf)",
        "profile_window": "[1, inf)",
    }  # checked by params.build before any model loads
    accumulates = True  # the frequency policy ranks by accumulated attention while decoding
    min_recovery: float = field(default=0.9, metadata={"help": "attention mass a policy must recover (T)"})
    heavy_hitter_frac: float = field(default=0.3, metadata={"help": "heavy hitters' share of the budget"})
    global_tokens: int = 4
    profile_window: int = field(default=64, metadata={"help": "last queries whose attention profiles the heads"})

    def query_window(self) -> int:
        return self.profile_window

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        m = run.target
        if lc.n <= m:
            return
        w = min(self.profile_window, lc.n, lc.queries.shape[2])
        probs = window_attention(lc.queries[:, :, -w:], lc.k, run.scaling)  # [1, H, g, w, n]
        mass = probs.sum(dim=(2, 3))  # per key, per KV head
        total = mass.sum(-1, keepdim=True)
        masks = self.policy_masks(lc, run, mass, torch.ones_like(lc.pos, dtype=torch.bool))
        recovered = torch.stack([(mass * mk).sum(-1) / total.squeeze(-1) for mk in masks])  # [P, 1, H]
        ok = recovered >= self.min_recovery
        ok[-1] = True
        choice = ok.float().argmax(dim=0)  # first policy that recovers
        lc.state["policies"] = [POLICIES[int(c)] for c in choice[0]]
        self.keep_masked(lc, masks)

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        """Each head's profiled policy, applied again to the cache with the fed tokens (Algorithm 1's
        generation phase): a new token stays only if the head's policy keeps it (its class, a heavy
        hitter by accumulated attention, or the local window, which moves), at most the budget.
        Nothing to do when the prefill was not compressed (no profile)."""
        if "policies" not in lc.state:
            return
        alive = lc.valid
        freq = lc.score.masked_fill(~alive, float("-inf"))
        self.keep_masked(lc, self.policy_masks(lc, run, freq, alive))

    def policy_masks(self, lc: LayerCache, run: Run, freq: torch.Tensor, alive: torch.Tensor) -> list[torch.Tensor]:
        """candidate_masks over the slots still held (`alive`), frequency ranked by `freq`."""
        m = run.target
        heavy = int(m * self.heavy_hitter_frac)
        tok = torch.tensor(run.tokens[: int(lc.pos.max()) + 1], device=lc.k.device)[lc.pos[0]]  # [H, n] ids per slot
        special = ((lc.pos < self.global_tokens) | self.special_ids(run, tok).unsqueeze(0)) & alive
        punct = self.punct_ids(run, tok).unsqueeze(0) & alive
        local = recent(lc, m - heavy) & alive
        return candidate_masks(special, punct, freq, local, heavy, m)

    @staticmethod
    def keep_masked(lc: LayerCache, masks: list[torch.Tensor]) -> None:
        """Keep each head's mask of its policy (lc.state["policies"]); heads keep different counts
        (the `valid` slot masks the rest), slots no head holds are dropped."""
        chosen = torch.stack([masks[POLICIES.index(p)][0, h] for h, p in enumerate(lc.state["policies"])])[None]
        keep = chosen.sum(-1).max()
        order = chosen.float().argsort(dim=-1, descending=True, stable=True)[:, :, : int(keep)].sort(-1).values
        valid = chosen.gather(2, order)
        lc.keep(order)
        lc.slot("valid", True, torch.bool)
        lc.set_slot("valid", valid)

    def _classes(self, run: Run):
        tok = run.tokenizer
        key = id(tok)
        if key not in _VOCAB_CLASSES:
            n = len(tok)
            special = torch.zeros(n, dtype=torch.bool)
            special[[i for i in tok.all_special_ids if i < n]] = True
            punct = torch.tensor(
                [
                    (lambda s: bool(s) and all(ch in string.punctuation for ch in s))(
                        tok.convert_ids_to_tokens(i).replace("Ġ", "").replace("▁", "").strip()
                    )
                    for i in range(n)
                ]
            )
            _VOCAB_CLASSES[key] = (special, punct)
        return _VOCAB_CLASSES[key]

    def special_ids(self, run: Run, tok: torch.Tensor) -> torch.Tensor:
        return self._classes(run)[0].to(tok.device)[tok]

    def punct_ids(self, run: Run, tok: torch.Tensor) -> torch.Tensor:
        return self._classes(run)[1].to(tok.device)[tok]
