from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from harness import models
from harness.errors import UserError
from harness.interfaces import StepScorer
from harness.registry import register
from harness.methods.prm._common import batched_logits, scoring_effect


@register
@dataclass
class HFORM(StepScorer):
    """An outcome reward model — Cobbe et al. 2021, "Training Verifiers to Solve Math Word
    Problems" (arXiv:2110.14168); the ORM baseline of PRM800K and RLHFlow.

    One score per whole solution from a Hugging Face sequence-classification head: chat messages
    (user = problem, assistant = the steps joined by a blank line; plain "problem\\n\\nsolution"
    without a chat template), the head's output at the last token: a single logit as is (its
    sigmoid is the vote weight), or with two labels the softmax probability of `positive_index`.
    model: a local folder or hf:id (safetensors)."""

    name = "hf_orm"
    family = "prm"
    paper = "Training Verifiers to Solve Math Word Problems (arXiv:2110.14168)"
    smoke_args = {"model": "{model}"}
    ranges = {"batch_size": "[1, inf)", "positive_index": "[0, inf)"}  # checked by params.build before any model loads
    model_params = ("model",)
    model: str = field(default="", metadata={"help": "ORM checkpoint: local folder or hf:id"})
    positive_index: int = 1
    batch_size: int = 8
    device: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self):
        if not self.model:
            raise ValueError("hf_orm needs model=FOLDER or model=hf:ID (an outcome reward model)")
        self._loaded = None
        self._labels = 1

    def resolved(self, lm, ctx) -> dict:
        from harness.models import identity as model_identity

        model_id, sha = model_identity(self.model)
        return {"model": model_id, "model_sha256": sha}

    def score(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        if self._loaded is None:
            self._loaded = models.load(self.model, self.device, self.trust_remote_code, head="sequence_classification")
            cfg = self._loaded.model.config
            if cfg.pad_token_id is None:  # the head finds the last real token through the pad id
                cfg.pad_token_id = self._loaded.tokenizer.pad_token_id
            self._labels = cfg.num_labels
        tok = self._loaded.tokenizer
        seqs = []
        for steps in solutions:
            msgs = [{"role": "user", "content": problem}, {"role": "assistant", "content": "\n\n".join(steps)}]
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template(msgs, tokenize=False)
                seqs.append(tok.encode(text, add_special_tokens=False))
            else:
                seqs.append(tok.encode(problem + "\n\n" + "\n\n".join(steps)))
        out: list[list[float]] = [[] for _ in seqs]
        for i, logits in batched_logits(self._loaded.model, seqs, tok.pad_token_id, self.batch_size):
            if self._labels == 1:
                out[i] = [float(logits[0])]
            elif self.positive_index < self._labels:
                out[i] = [float(torch.softmax(logits, -1)[self.positive_index])]
            else:
                raise UserError(f"hf_orm: positive_index {self.positive_index} but the head has {self._labels} labels")
        return out

    def aggregate(self, step_scores: list[float]) -> float:
        return step_scores[0] if step_scores else -math.inf

    def vote_weight(self, score: float) -> float:
        return 1 / (1 + math.exp(-score)) if self._labels == 1 else score

    def check_effect(self, lm, ctx, result) -> str | None:
        return scoring_effect(self.name, result)
