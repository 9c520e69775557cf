from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.methods.rope._finetune import FinetunedRope
from harness.methods.rope.pi import PI


@register
@dataclass
class PIFinetuned(FinetunedRope, PI):
    """Position Interpolation with its fine-tune — Chen et al. 2023, "Extending Context Window of
    Large Language Models via Positional Interpolation" (arXiv:2306.15595).

    θ_i' = θ_i / s with s = fit_length / L, and the whole model fine-tuned at fit_length tokens
    under those positions (the paper: 1000 steps, AdamW, lr 2e-5, 20 warm-up steps, no weight
    decay). `harness fit --method pi_ft` trains (methods/rope/_finetune.py: data, optimiser, the
    learning-rate rescaling and the CPU-sized step count); evaluation uses the trained weights with
    the same s at every length. The zero-shot row is `pi`.

    factor: s; None = fit_length / the model's original context.
    """

    name = "pi_ft"
    smoke_args = {"fit_length": "256", "steps": "2", "warmup": "1"}
