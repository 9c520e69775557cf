from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness import models
from harness.errors import UserError
from harness.registry import register
from harness.methods.prm._common import PRMScorer, batched_logits, token_id

CONVENTIONS = ("step_tag", "token_classification", "chat")
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@register
@dataclass
class HFPRM(PRMScorer):
    """A Hugging Face process reward model, read out by its input convention (anchors-prm §3):

    - step_tag (Math-Shepherd, Wang et al., arXiv:2312.08935; peiyi9979/math-shepherd-mistral-7b-prm):
      text = problem + " " + Σ (step + tag + "\\n"), tag " ки"; a causal LM's logits at every tag
      position, softmax over the candidate tokens (good "+", bad "-"), P(good) per step.
    - token_classification (Qwen2.5-Math-PRM, arXiv:2501.07301): chat messages (system prompt,
      user = problem, assistant = steps each followed by "<extra_0>"), a 2-class head; softmax,
      index `positive_index` (1) at every separator position.
    - chat (RLHFlow Llama3.1-8B-PRM): user turn 1 = problem + " " + step 1, later user turns one
      step each, every assistant turn = good token; the score of step k is P(good) over (good,
      bad) at the position that predicts step k's assistant token (RLHFlow's index -3 with the
      Llama-3 template). One forward over the whole conversation when the template is
      prefix-consistent (checked), else one per step.

    model: a local folder or hf:id (safetensors). agg: min/product/last/mean (RLHFlow used mean,
    Math-Shepherd min, PRM800K product). The record's `calibrated` stays true: a real checkpoint
    gives its own probabilities; the tests use random tiny models."""

    name = "hf_prm"
    paper = "Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human Annotations (arXiv:2312.08935)"
    # the zoo tokenizer of the matrix test's tiny model: "!" never occurs in the synthetic world's text
    smoke_args = {"model": "{model}", "step_tag": " !", "good_token": ";", "bad_token": "="}
    ranges = {"batch_size": "[1, inf)", "positive_index": "[0, inf)"}  # checked by params.build before any model loads
    model_params = ("model",)
    model: str = field(default="", metadata={"help": "PRM checkpoint: local folder or hf:id"})
    convention: str = field(default="step_tag", metadata={"help": "step_tag, token_classification or chat"})
    step_tag: str = field(default=" ки", metadata={"help": "step_tag: the tag after each step"})
    good_token: str = "+"
    bad_token: str = "-"
    separator: str = field(default="<extra_0>", metadata={"help": "token_classification: step separator"})
    positive_index: int = 1
    system_prompt: str = QWEN_SYSTEM
    batch_size: int = 8
    device: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}")
        if not self.model:
            raise ValueError("hf_prm needs model=FOLDER or model=hf:ID (a process reward model)")
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            head = "token_classification" if self.convention == "token_classification" else "causal_lm"
            if head == "token_classification" and self.trust_remote_code:
                head = "base"  # Qwen2.5-Math-PRM's remote code defines its own 2-class head
            self._loaded = models.load(self.model, self.device, self.trust_remote_code, head=head)
        return self._loaded

    def resolved(self, lm, ctx) -> dict:
        from harness.models import identity as model_identity

        model_id, sha = model_identity(self.model)
        return {"model": model_id, "model_sha256": sha}

    def score(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        loaded = self._load()
        tok = loaded.tokenizer
        if self.convention == "chat":
            return [self._chat(loaded, problem, steps) for steps in solutions]
        if self.convention == "step_tag":
            marker = token_id(tok, self.step_tag, "step_tag")
            texts = [problem + " " + "".join(s + self.step_tag + "\n" for s in steps) for steps in solutions]
        else:
            marker = token_id(tok, self.separator, "separator")
            texts = [self._qwen_text(tok, problem, steps) for steps in solutions]
        seqs = [tok.encode(t, add_special_tokens=self.convention == "step_tag") for t in texts]
        pair = (token_id(tok, self.good_token, "good_token"), token_id(tok, self.bad_token, "bad_token"))
        out: list[list[float]] = [[] for _ in seqs]
        for i, logits in batched_logits(loaded.model, seqs, tok.pad_token_id, self.batch_size):
            at = [k for k, t in enumerate(seqs[i]) if t == marker]
            if len(at) != len(solutions[i]):
                raise UserError(
                    f"hf_prm: found {len(at)} step markers for {len(solutions[i])} steps; the marker "
                    f"{self.step_tag if self.convention == 'step_tag' else self.separator!r} must be "
                    f"one token of its own and must not occur inside the steps"
                )
            if self.convention == "step_tag":
                probs = torch.softmax(logits[at][:, list(pair)], dim=-1)[:, 0]
            else:
                probs = torch.softmax(logits[at], dim=-1)[:, self.positive_index]
            out[i] = probs.tolist()
        return out

    def _qwen_text(self, tok, problem, steps) -> str:
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": problem},
            {"role": "assistant", "content": "".join(s + self.separator for s in steps)},
        ]
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return "\n".join(m["content"] for m in messages)

    def _conversation(self, tok, problem, steps) -> list[int]:
        msgs = []
        for k, step in enumerate(steps):
            msgs += [
                {"role": "user", "content": (problem + " " + step) if k == 0 else step},
                {"role": "assistant", "content": self.good_token},
            ]
        ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def _chat(self, loaded, problem, steps) -> list[float]:
        tok = loaded.tokenizer
        if not getattr(tok, "chat_template", None):
            raise UserError(f"hf_prm convention=chat needs a tokenizer with a chat template ({self.model})")
        if not steps:
            return []
        good, bad = token_id(tok, self.good_token, "good_token"), token_id(tok, self.bad_token, "bad_token")
        prefixes = [self._conversation(tok, problem, steps[: k + 1]) for k in range(len(steps))]
        # the position predicting step k's assistant token: the last `good` token of the k-turn prefix
        pos = [max(j for j, t in enumerate(p) if t == good) - 1 for p in prefixes]
        full = prefixes[-1]
        if all(full[: len(p)] == p for p in prefixes):
            ((_, logits),) = batched_logits(loaded.model, [full], tok.pad_token_id, 1)
            rows = logits[pos]
        else:
            rows = torch.stack(
                [
                    lg[q]
                    for (_, lg), q in zip(
                        (next(batched_logits(loaded.model, [p], tok.pad_token_id, 1)) for p in prefixes), pos
                    )
                ]
            )
        return torch.softmax(rows[:, [good, bad]], dim=-1)[:, 0].tolist()
