from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.registry import register
from harness.methods.kv._cache import LayerCache
from harness.methods.kv._common import KVMethod
from harness.methods.kv._eviction import keep_top
from harness.methods.kv._run import Run

PRIOR = -65516.0  # added to image tokens and the recent window before the top-k (LOOK-M modify_llama.py)
MERGES = ("pivot", "average", "none")


def text_prior_keep(score: torch.Tensor, image: torch.Tensor, pos: torch.Tensor, heavy: int, recent: int):
    """Kept slots [1, H_kv, n] (bool): the `recent` newest tokens plus the `heavy` best by score
    after PRIOR is added to image tokens (text tokens fill the top first; the window, kept anyway, is
    left out of the top-k instead of penalised, so every head keeps exactly heavy + recent).
    score [1, H_kv, n] (accumulated attention), image [1, H_kv, n] bool, pos [1, H_kv, n]."""
    newest = pos.max(dim=-1, keepdim=True).values
    window = pos > newest - recent
    prior = (score + PRIOR * image.to(score.dtype)).masked_fill(window, float("-inf"))  # the window is kept anyway
    top = prior.topk(min(heavy, prior.shape[-1]), dim=-1).indices
    return window | torch.zeros_like(window).scatter(-1, top, True)


def merge_evicted(k, v, kept: torch.Tensor, how: str):
    """Each evicted slot goes to the kept slot of its head whose key is most cosine-similar; the kept
    slot becomes mean({x_c} ∪ {(x_e + x_c)/2}) ("pivot") or mean({x_c} ∪ {x_e}) ("average") over its
    assigned e, for keys and values alike. k, v [1, H_kv, n, d]; kept [1, H_kv, n] bool. Returns the
    new k, v (evicted slots unchanged)."""
    if how == "none":
        return k, v
    kn = F.normalize(k.float(), dim=-1)
    sim = (kn @ kn.transpose(-1, -2)).masked_fill(~kept[:, :, None, :], float("-inf"))  # row e, column c
    target = sim.argmax(-1)  # [1, H_kv, n]: each slot's most similar kept slot
    gone = (~kept).to(k.dtype)
    out = []
    for x in (k, v):
        partner = x.gather(2, target[..., None].expand_as(x))  # x_c for every e
        add = (x + partner) / 2 if how == "pivot" else x
        sums = torch.zeros_like(x).scatter_add_(2, target[..., None].expand_as(x), add * gone[..., None])
        count = torch.zeros_like(gone).scatter_add_(2, target, gone)
        out.append(torch.where(kept[..., None], (x + sums) / (1 + count)[..., None], x))
    return out[0], out[1]


@register
@dataclass
class LookM(KVMethod):
    """LOOK-M — Wan et al. 2024, "LOOK-M: Look-Once Optimization in KV Cache for Efficient Multimodal
    Long-Context Inference" (Findings of EMNLP 2024, arXiv:2406.18139); rules from SUSTechBruce/LOOK-M
    @ecf0f51 (`kv_token_merge/modify_llama.py`, default script `text_prior_pivot_merge`).

    Once, at prefill, per layer and KV head, and only when the prompt holds image tokens (the
    model's `image_token_id` positions, 576 per image in LLaVA-1.5): the score is H2O's attention
    accumulated over the prefill queries; image tokens and the recent window get −65516 added, so
    text tokens fill the top-k first; kept = the top ⌊heavy_share·B⌋ plus the newest rest of the
    budget B (official HH_R = RECENT_R = 0.1 of the prompt: budget 0.2, heavy_share 0.5). Each
    evicted token's key and value then merge into the kept token with the most cosine-similar key
    (`merge`: pivot (default), average, or none; the paper's "weighted" variant is not implemented).
    Decoded tokens are appended without further eviction.

    Needs a vision-language model: transformers' LLaVA family (LlavaForConditionalGeneration), loaded
    through the harness's model path, and prompts that hold image tokens (kv_compression's
    `--task-arg image_tokens=576`: one LLaVA-1.5 image's worth after BOS). The harness's LM API is text-only: image-token positions enter
    the model as their token embedding, not as vision-tower features (the API passes no pixels), so the
    records this project can make (a tiny random-initialised LLaVA) test the mechanism only;
    quality numbers need a real checkpoint (e.g. llava-hf/llava-1.5-7b-hf) and image inputs."""

    name = "look_m"
    paper = (
        "LOOK-M: Look-Once Optimization in KV Cache for Efficient Multimodal Long-Context Inference (arXiv:2406.18139)"
    )
    compresses = "prefill"
    accumulates = True
    ranges = {"heavy_share": "[0, 1]"}  # checked by params.build before any model loads
    # the matrix's smoke model is a text-only Llama, which look_m refuses (no image tokens): its
    # mechanism is tested on a tiny random LLaVA in tests/test_kv_look_m.py instead
    smoke_not_with = ("kv_compression", "needle", "passkey", "perplexity", "spec_acceptance")
    budget: float = field(default=0.2, metadata={"help": "kept tokens (official: HH_R 0.1 + RECENT_R 0.1)"})
    heavy_share: float = field(default=0.5, metadata={"help": "text-prior top-k share of the budget (rest: recent)"})
    merge: str = field(default="pivot", metadata={"help": "pivot (default script), average, or none"})

    def __post_init__(self):
        super().__post_init__()
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}")
        self._image_token: int | None = None
        self._merged = 0

    def prepare(self, lm) -> None:
        token = lm.image_token_id
        if token is None:
            raise UserError(
                f"look_m needs a vision-language model with image tokens (transformers' LLaVA family); "
                f"{type(lm.model).__name__} has no image_token_id"
            )
        self._image_token, self._merged = token, 0

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        ids = torch.tensor(run.tokens, device=lc.pos.device)
        image = ids[lc.pos] == self._image_token
        if lc.n <= run.target or not bool(image.any()):  # text-only prompts are left alone, as the official code
            return
        heavy = int(run.target * self.heavy_share)
        kept = text_prior_keep(lc.score, image, lc.pos, heavy, run.target - heavy)
        k, v = merge_evicted(lc.k, lc.v, kept, self.merge)
        lc.replace(k, v)
        self._merged += int((~kept).sum()) if self.merge != "none" else 0
        keep_top(lc, kept.float(), int(kept.sum(-1).min()), in_order=True)

    def check_effect(self, lm, ctx, result) -> str | None:
        if self.merge != "none" and not self._merged:
            return "no evicted token was merged (no prompt held image tokens beyond the budget)"
        return super().check_effect(lm, ctx, result)
