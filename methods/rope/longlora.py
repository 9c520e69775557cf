from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.patching import patched_forwards
from harness.attention import AttentionInputs, attention_override, rotate
from harness.methods.rope._finetune import FinetunedRope
from harness.methods.rope.pi import PI

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def s2_attend(a: AttentionInputs, group: int) -> torch.Tensor:
    """Shifted sparse attention: queries attend causally inside groups of `group` tokens; the
    second half of the heads sees the sequence rolled by group/2 (official: `roll`, so the last
    group of those heads wraps around to the start), then rolled back. RoPE at the true positions,
    before the shift. Training rows are unpadded, so only the causal rule applies."""
    b, h, n, d = a.q.shape
    if n % group:
        raise ValueError(f"S²-Attn needs the sequence ({n}) to be a multiple of the group size ({group})")
    a = a.repeated()  # the shift moves half of the query heads (official: after repeat_kv)
    cos, sin = a.rope(a.q_pos)
    q, k, v = rotate(a.q, cos, sin), rotate(a.k, cos, sin), a.v
    half = h // 2

    def shift(x, by):
        return torch.cat([x[:, :half], x[:, half:].roll(by, dims=2)], dim=1)

    q, k, v = (shift(x, -(group // 2)) for x in (q, k, v))
    grouped = [x.reshape(b, h, n // group, group, d) for x in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(*grouped, is_causal=True, scale=a.scaling)
    return shift(out.reshape(b, h, n, d), group // 2)


def lora_factors(lm, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A (rank x in, Kaiming-uniform as peft) and B (out x rank, zeros) per attention projection."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in lm.model.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGETS and isinstance(module, torch.nn.Linear):
            bound = 1 / math.sqrt(module.in_features)  # kaiming_uniform_(a=√5) on a rank x in matrix
            a = (torch.rand(rank, module.in_features, generator=gen) * 2 - 1) * bound
            out[f"{name}.lora_A"] = a.to(lm.device).requires_grad_(True)
            out[f"{name}.lora_B"] = torch.zeros(module.out_features, rank, device=lm.device, requires_grad=True)
    return out


def lora_forwards(lm, factors: dict[str, torch.Tensor], scale: float):
    """Patch each targeted projection to x Wᵀ + scale · (x Aᵀ) Bᵀ (the unmerged LoRA forward)."""
    modules = dict(lm.model.named_modules())
    targets = [modules[n[: -len(".lora_A")]] for n in factors if n.endswith(".lora_A")]
    names = {id(modules[n[: -len(".lora_A")]]): n[: -len(".lora_A")] for n in factors if n.endswith(".lora_A")}

    def make(module):
        A, B = factors[names[id(module)] + ".lora_A"], factors[names[id(module)] + ".lora_B"]
        return lambda x: torch.nn.functional.linear(x, module.weight, module.bias) + scale * ((x @ A.t()) @ B.t())

    return patched_forwards(targets, make)


def merged(lm, factors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """W + scale · B A for each projection (what evaluation swaps in)."""
    own = dict(lm.model.named_parameters())
    return {
        f"{n[: -len('.lora_A')]}.weight": own[f"{n[: -len('.lora_A')]}.weight"].detach()
        + scale * factors[n[: -len(".lora_A")] + ".lora_B"].to(lm.device) @ factors[n].to(lm.device)
        for n in factors
        if n.endswith(".lora_A")
    }


@register
@dataclass
class LongLoRA(FinetunedRope, PI):
    """LongLoRA — Chen et al. 2024, "LongLoRA: Efficient Fine-tuning of Long-Context Large Language
    Models" (arXiv:2309.12307); settings from dvlab-research/LongLoRA `fine-tune.py` and
    `llama_attn_replace.py`.

    Fine-tuning at fit_length tokens with Position-Interpolated RoPE (s = fit_length / L), where
    attention is S²-Attn (groups of group_size_ratio · fit_length tokens, half the heads shifted by
    half a group), LoRA (rank 8, alpha 16, no dropout) on q/k/v/o, and the embeddings and norms
    trainable (`trainable_params="embed,norm"`); `full_attn` trains under plain causal attention
    instead (`use_full_attn`), `low_rank=false` trains every weight (`low_rank_training`), the
    paper's ablations. Evaluation merges W + (alpha/r)·BA into the weights, swaps in the trained
    embeddings and norms and uses full attention with the same PI positions, as in the paper.
    Training loop, data, optimiser and the rescaled learning rate: methods/rope/_finetune.py (the
    paper: 1000 steps, lr 2e-5, 20 warm-up steps, constant).
    """

    name = "longlora"
    paper = "LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models (arXiv:2309.12307)"
    fit_version = "1"
    smoke_args = {"fit_length": "256", "steps": "2", "warmup": "1"}
    ranges = {
        "lora_rank": "[1, inf)",
        "lora_alpha": "(0, inf)",
        "group_size_ratio": "(0, 1]",
    }  # checked by params.build before any model loads
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale alpha/r)"})
    group_size_ratio: float = field(default=0.25, metadata={"help": "S²-Attn group size / fit_length"})
    # the official fine-tune.py's `use_full_attn`: LoRA trained under plain causal attention, the
    # paper's ablation of S²-Attn; left out of run ids at its default (records made before it)
    full_attn: bool = field(
        default=False,
        metadata={"omit_at_default": True, "help": "train with full attention instead of S²-Attn (use_full_attn)"},
    )
    # the official `low_rank_training`: false trains every weight (no LoRA) under S²-Attn
    low_rank: bool = field(
        default=True,
        metadata={"omit_at_default": True, "help": "LoRA on q/k/v/o plus embeddings and norms; false: every weight"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.lora_rank < 1 or not 0 < self.group_size_ratio <= 1:
            raise ValueError("lora_rank must be positive and group_size_ratio in (0, 1]")

    def group(self) -> int:
        g = int(self.fit_length * self.group_size_ratio)
        if g < 2 or self.fit_length % g:
            raise ValueError(
                f"group_size_ratio {self.group_size_ratio} must split fit_length "
                f"{self.fit_length} into equal groups of at least 2 tokens"
            )
        return g

    def training_setup(self, lm, ctx, shape, s):
        from harness.methods.rope._common import rope_override

        own = dict(lm.model.named_parameters())
        factors = lora_factors(lm, self.lora_rank, seed=ctx.seed) if self.low_rank else {}
        trainable = dict(factors, **{n: p for n, p in own.items() if not self.low_rank or "embed" in n or "norm" in n})
        group, scale = self.group(), self.lora_alpha / self.lora_rank
        return trainable, lambda: [
            rope_override(lm.model, self.freq_fn(shape, s)),
            *([] if self.full_attn else [attention_override(lm.model, lambda a: s2_attend(a, group))]),
            *([lora_forwards(lm, factors, scale)] if factors else []),
        ]

    def eval_weights(self, lm) -> dict[str, torch.Tensor]:
        factors = {n: t for n, t in self._trained.items() if ".lora_" in n}
        rest = {n: t for n, t in self._trained.items() if ".lora_" not in n}
        return dict(rest, **merged(lm, factors, self.lora_alpha / self.lora_rank))
