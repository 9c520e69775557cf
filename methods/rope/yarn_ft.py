from __future__ import annotations

from dataclasses import dataclass

from harness.registry import register
from harness.methods.rope._finetune import FinetunedRope
from harness.methods.rope.yarn import YaRN


@register
@dataclass
class YaRNFinetuned(FinetunedRope, YaRN):
    """YaRN with its fine-tune — Peng et al. 2023, "YaRN: Efficient Context Window Extension of
    Large Language Models" (arXiv:2309.00071).

    YaRN's frequencies and temperature (see `yarn`) at s = fit_length / L, and the whole model
    fine-tuned at fit_length tokens under them (the paper: 400 steps, AdamW, lr 2e-5, 20 warm-up
    steps, no weight decay). `harness fit --method yarn_ft` trains (methods/rope/_finetune.py);
    evaluation uses the trained weights with the same s at every length. The zero-shot row is `yarn`.

    factor: s; None = fit_length / the model's original context.
    """

    name = "yarn_ft"
    smoke_args = {"fit_length": "256", "steps": "2", "warmup": "1"}
