from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.spec._common import load_draft

SCHEDULES = ("constant", "heuristic", "heuristic_transient")


@register
@dataclass
class HFAssisted(LMMethod):
    """Hugging Face transformers' assisted generation (`model.generate(assistant_model=draft)`), the
    peer baseline of the speculative family: the draft proposes `num_assistant_tokens` tokens, the
    target verifies them in one forward (argmax matches at temperature 0, the Leviathan rule with
    residual clamp(p − q, 0) when sampling: `_speculative_sampling`).

    Every setting is pinned here (and recorded), not left to the installed version's defaults:
    num_assistant_tokens = 4, schedule "constant" and confidence threshold 0 (off) make it the same
    fixed-γ chain as `sps` with γ = 4. transformers 5.x's own defaults are 20, "constant" and 0.4
    (reference doc A4); set them with --method-arg to run HF as shipped. Batch size 1, top_k 0,
    top_p 1, no repetition penalty.
    """

    name = "hf_assisted"
    family = "spec"
    paper = "Fast Inference from Transformers via Speculative Decoding (arXiv:2211.17192), as in HF transformers"
    patches = frozenset({"decoding"})
    smoke_args = {"draft": "{model}"}
    ranges = {
        "num_assistant_tokens": "[1, inf)",
        "assistant_confidence_threshold": "[0, 1]",
    }  # checked by params.build before any model loads
    model_params = ("draft",)
    draft: str = field(default="zoo:tiny-llama-draft", metadata={"help": "assistant model (same tokenizer)"})
    num_assistant_tokens: int = field(default=4, metadata={"help": "draft tokens per step (HF default 20)"})
    num_assistant_tokens_schedule: str = field(
        default="constant", metadata={"help": "constant, heuristic, heuristic_transient"}
    )
    assistant_confidence_threshold: float = field(default=0.0, metadata={"help": "0 = off (HF default 0.4)"})

    def __post_init__(self):
        if self.num_assistant_tokens < 1:
            raise ValueError("num_assistant_tokens must be at least 1")
        if self.num_assistant_tokens_schedule not in SCHEDULES:
            raise ValueError(f"num_assistant_tokens_schedule must be one of {', '.join(SCHEDULES)}")
        if not 0 <= self.assistant_confidence_threshold < 1:
            raise ValueError("assistant_confidence_threshold must be in [0, 1)")

    def resolved(self, lm, ctx) -> dict:
        import transformers

        return {"transformers": transformers.__version__, "batch_size": 1, "top_k": 0, "top_p": 1.0}

    def apply(self, lm, ctx):
        import contextlib

        drafter = load_draft(self.draft, lm, self.name)
        cfg = drafter.generation_config
        cfg.num_assistant_tokens = self.num_assistant_tokens
        cfg.num_assistant_tokens_schedule = self.num_assistant_tokens_schedule
        cfg.assistant_confidence_threshold = self.assistant_confidence_threshold
        tel = lm.telemetry

        @torch.no_grad()
        def generate_batch(ids, mask, max_new_tokens, temperature, top_p):
            if top_p < 1.0:
                raise UserError("hf_assisted samples from the full distribution (top_p=1)")
            sampling = (
                dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
                if temperature > 0
                else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            )
            rows = []
            for row, m in zip(ids, mask):  # assisted generation runs at batch size 1
                prompt = row[m.bool()][None]
                before = tel["forward_calls"]
                out = lm.model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    assistant_model=drafter,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=lm.tokenizer.pad_token_id,
                    repetition_penalty=None,
                    **sampling,
                )
                tel["target_forwards"] += tel["forward_calls"] - before
                rows.append(out[0, prompt.shape[1] :].tolist())
            width = max(map(len, rows))
            pad = lm.tokenizer.pad_token_id
            return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

        @contextlib.contextmanager
        def patched():
            hook = drafter.register_forward_pre_hook(lambda *_: tel.update(draft_forwards=1))
            try:
                with lm.batch_hooks(generate_batch=generate_batch):
                    yield
            finally:
                hook.remove()

        return patched()

    def check_effect(self, lm, ctx, result):
        return None if lm.telemetry["draft_forwards"] else "the assistant model never ran"
