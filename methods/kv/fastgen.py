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
POLICIES = ("special", "special+punct", "special+punct+frequency", "special+punct+frequency+local", "full")
BUDGET_RULES = ("target", "cap")
BISECT_STEPS = 40  # threshold bisection steps (2^-40: every distinct recovery value is resolved)


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


def choose(recovered: torch.Tensor, threshold: float) -> torch.Tensor:
    """The first policy whose recovered attention mass reaches the threshold T, per head (the last
    policy when none does): recovered [P, ...] -> policy index [...]."""
    ok = recovered >= threshold
    ok[-1] = True
    return ok.float().argmax(dim=0)


def kept_at(recovered: torch.Tensor, sizes: torch.Tensor, threshold: float) -> float:
    """Mean kept fraction over the heads when each takes `choose`'s policy; sizes [P, ...] are the
    policies' kept fractions per head."""
    return float(sizes.double().gather(0, choose(recovered, threshold)[None]).mean())


def threshold_for(recovered: torch.Tensor, sizes: torch.Tensor, target: float) -> tuple[float, float]:
    """(T, kept fraction): the largest recovery threshold T in [0, 1] whose choices keep at most
    `target` of the tokens on average, by bisection (the kept fraction never falls as T rises: the
    policies are nested), snapped to the recovery value where the kept fraction steps. When even
    T = 0 (every head on its cheapest policy) keeps more, T = 0."""
    lo, hi = 0.0, 1.0
    if kept_at(recovered, sizes, hi) <= target:
        return hi, kept_at(recovered, sizes, hi)
    if kept_at(recovered, sizes, lo) > target:
        return lo, kept_at(recovered, sizes, lo)
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept_at(recovered, sizes, mid) <= target else (lo, mid)
    at = recovered[(recovered >= lo) & (recovered < hi)]  # the step's own recovery value, when it is there
    t = float(at.min()) if at.numel() else lo
    return t, kept_at(recovered, sizes, t)


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
    +local (recent window) [→ C_full]; each head takes the first whose masked attention keeps ≥ T
    of the attention mass. Heads keep different counts (masked slots). `budget_rule`:

    - "target" (default): as in the paper, the recovery threshold T sets the compression, and T is
      chosen per prompt so that the kept fraction (mean over layers and heads) is as close to the
      budget as it can be without exceeding it: bisection on T over the profile of every layer
      (the kept fraction is a step function of T, non-decreasing: the policies are nested). The
      policies are sized on the prompt, not on the budget (the paper's ratios; cold-compress's
      fastgen.yaml values): frequency keeps heavy_hitter_frac·n heavy hitters, local adds the
      recent_frac·n newest tokens, and C_full ends the list (the paper's fallback). min_recovery
      is not used. The chosen T and the achieved fraction go to the telemetry
      (`kv.fastgen_threshold@<budget>`, `kv.fastgen_kept@<budget>`: sums over
      `kv.fastgen_profiles@<budget>` prompts).
    - "cap" (the harness's earlier rule): T = `min_recovery`; every policy is capped at the budget
      (frequency at heavy_hitter_frac of it, local filling the rest) and a head that no policy
      satisfies takes the last (cold-compress's fallback), never the full cache: the budget is
      only an upper bound (at budget 0.95 the zoo model kept 0.64 of the tokens).

    The profile uses the last `profile_window` queries' attention (SDPA-compatible) rather than the
    full prefill matrix [our choice, as SnapKV's window]. While decoding each head keeps applying
    its policy to the cache with the new tokens (the paper's generation phase): a "special" head
    keeps only special tokens, "+punct" also punctuation, "+frequency" the top heavy hitters by
    accumulated attention (H2O's score, over every query so far), "+local" the moving recent
    window, "full" everything; at the profile's sizes ("target") or capped at the budget ("cap"). Compresses: prefill and every decoding step."""

    name = "fastgen"
    paper = "Model Tells You What to Discard: Adaptive KV Cache Compression for LLMs (arXiv:2310.01801)"
    compresses = "both"
    budget_unit = "cap"
    ranges = {
        "min_recovery": "(0, 1]",
        "heavy_hitter_frac": "[0, 1]",
        "global_tokens": "[0, inf)",
        "profile_window": "[1, inf)",
        "recent_frac": "[0, 1]",
    }  # checked by params.build before any model loads
    accumulates = True  # the frequency policy ranks by accumulated attention while decoding
    budget_rule: str = field(
        default="target", metadata={"help": "target: T chosen per prompt to keep the budget; cap: T = min_recovery"}
    )
    min_recovery: float = field(default=0.9, metadata={"help": "cap: attention mass a policy must recover (T)"})
    heavy_hitter_frac: float = field(
        default=0.3, metadata={"help": "heavy hitters: share of the prompt (target) or of the budget (cap)"}
    )
    recent_frac: float = field(default=0.3, metadata={"help": "target: the local window's share of the prompt"})
    global_tokens: int = 4
    profile_window: int = field(default=64, metadata={"help": "last queries whose attention profiles the heads"})

    def query_window(self) -> int:
        return self.profile_window

    def __post_init__(self):
        super().__post_init__()
        if self.budget_rule not in BUDGET_RULES:
            raise ValueError(f"budget_rule must be one of {', '.join(BUDGET_RULES)}")
        self._lm = None

    def prepare(self, lm) -> None:
        self._lm = lm

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        if lc.n <= run.target:
            return
        if self.budget_rule == "cap":
            masks, recovered, _ = self.profile(lc, run)
            lc.state["policies"] = [POLICIES[int(c)] for c in choose(recovered, self.min_recovery)[0]]
        else:  # one threshold for the prompt: every layer is profiled at the first layer's call
            if lc is next(iter(run.layers.values())):
                self.profile_prompt(run)
            masks = lc.state.pop("masks")
        self.keep_masked(lc, masks)

    def profile(self, lc: LayerCache, run: Run) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The policies' masks (cheapest first), the attention mass each recovers [P, 1, H] and the
        mass per token [1, H, n], from the last profile_window queries."""
        w = min(self.profile_window, lc.n, lc.queries.shape[2])
        probs = window_attention(lc.queries[:, :, -w:], lc.k, run.scaling)  # [1, H, g, w, n]
        mass = probs.sum(dim=(2, 3))  # per key, per KV head
        alive = torch.ones_like(lc.pos, dtype=torch.bool)
        if self.budget_rule == "target":
            heavy, size = (
                round(self.heavy_hitter_frac * lc.n),
                round((self.heavy_hitter_frac + self.recent_frac) * lc.n),
            )
            lc.state["sizes"] = (heavy, size)
        masks = self.policy_masks(lc, run, mass, alive)
        total = mass.sum(-1)
        return masks, torch.stack([(mass * mk).sum(-1) / total for mk in masks]), mass

    def profile_prompt(self, run: Run) -> None:
        """budget_rule "target": every layer's policies and recoveries, then the threshold whose
        choices keep the budget (threshold_for); each layer's heads take their policy. When even
        the cheapest policies keep more than the budget (a prompt of special tokens), every policy
        is capped at the budget by attention mass, as under "cap" [our choice]."""
        layers = list(run.layers.values())
        profiles = [self.profile(lc, run) for lc in layers]
        recovered = torch.cat([r for _, r, _ in profiles], dim=1)  # [P, L, H]
        sizes = torch.cat([torch.stack([mk.sum(-1) for mk in m]) for m, _, _ in profiles], dim=1) / layers[0].n
        target = run.target / layers[0].n
        t, kept = threshold_for(recovered, sizes, target)
        choice = choose(recovered, t)
        for i, (lc, (masks, _, mass)) in enumerate(zip(layers, profiles)):
            lc.state["policies"] = [POLICIES[int(c)] for c in choice[i]]
            if kept > target:
                masks = [_cap(mk, run.target, mass) for mk in masks]
                heavy, size = lc.state["sizes"]
                lc.state["sizes"] = (min(heavy, run.target), min(size, run.target))
            lc.state["masks"] = masks
        if kept > target:
            kept = sum(lc.state["masks"][0].sum().item() for lc in layers) / (
                len(layers) * layers[0].k.shape[1] * layers[0].n
            )
        if self._lm is not None:
            tel, b = self._lm.telemetry, f"{run.budget:g}"
            tel[f"kv.fastgen_threshold@{b}"] += t
            tel[f"kv.fastgen_kept@{b}"] += kept
            tel[f"kv.fastgen_profiles@{b}"] += 1

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
        """candidate_masks over the slots still held (`alive`), frequency ranked by `freq`; the
        profile's sizes ("target", then C_full) or the budget's ("cap")."""
        if "sizes" in lc.state:
            heavy, m = lc.state["sizes"]
        else:
            m = run.target
            heavy = int(m * self.heavy_hitter_frac)
        tok = torch.tensor(run.tokens[: int(lc.pos.max()) + 1], device=lc.k.device)[lc.pos[0]]  # [H, n] ids per slot
        special = ((lc.pos < self.global_tokens) | self.special_ids(run, tok).unsqueeze(0)) & alive
        punct = self.punct_ids(run, tok).unsqueeze(0) & alive
        local = recent(lc, m - heavy) & alive
        masks = candidate_masks(special, punct, freq, local, heavy, m)
        return masks + [alive] if "sizes" in lc.state else masks

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
        return _lookup(self._classes(run)[0], tok)

    def punct_ids(self, run: Run, tok: torch.Tensor) -> torch.Tensor:
        return _lookup(self._classes(run)[1], tok)


def _lookup(table: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """table[tok], False for ids past the tokenizer's vocabulary: models pad their embedding beyond
    it (Llama 3, Qwen2), and a model can generate such an id, which has no text to classify."""
    table = table.to(tok.device)
    return table[tok.clamp(max=len(table) - 1)] & (tok < len(table))
