"""Shared pieces of the PRM family: step-score aggregation and the effect check.

Aggregations (anchors-prm §1, §7.2): min (Math-Shepherd, PQM, OpenR), product (PRM800K: the
probability that every step is correct), last (search-and-learn / Snell et al.), mean (RLHFlow).
An empty step list scores -1.0 (OpenR's convention), below any probability."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.interfaces import StepScorer

AGGREGATIONS = ("min", "product", "last", "mean")


def aggregate(scores: list[float], how: str) -> float:
    if not scores:
        return -1.0
    if how == "min":
        return float(min(scores))
    if how == "product":
        return float(math.prod(scores))
    if how == "last":
        return float(scores[-1])
    if how == "mean":
        return float(sum(scores) / len(scores))
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")


def scoring_effect(name: str, result) -> str | None:
    """A scorer acted when every solution of every problem got a finite score, and the scores are
    not all equal on problems whose solutions reach different answers."""
    sc = result.details.get("scoring", {})
    if not sc.get("solutions"):
        return f"{name} scored no solutions"
    if sc.get("finite") != sc.get("solutions"):
        return f"{name} gave {sc['solutions'] - sc['finite']} of {sc['solutions']} solutions a non-finite score"
    if sc.get("varied_answers") and not sc.get("varied_scores"):
        return f"{name} gave every solution of every problem the same score although their answers differ"
    return None


@dataclass
class PRMScorer(StepScorer):
    """Base of the family's scorers: `agg` picks the aggregation of step scores."""

    family = "prm"
    # product is the probability that every step is correct (PRM800K): it needs step scores that
    # are probabilities; a scorer whose step scores are values or advantages (negative ones flip
    # the product's sign) sets this False and refuses agg=product
    probability_scores = True
    agg: str = field(default="min", metadata={"help": "min, product, last or mean over step scores"})

    def __post_init__(self):
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"agg must be one of {', '.join(AGGREGATIONS)}")
        if self.agg == "product" and not self.probability_scores:
            raise ValueError(
                f"agg=product multiplies step probabilities, but {self.name}'s step scores are not probabilities "
                "(they can be negative, which flips the product's sign); use min, last or mean"
            )

    def aggregate(self, step_scores: list[float]) -> float:
        return aggregate(step_scores, self.agg)

    def check_effect(self, lm, ctx, result) -> str | None:
        return scoring_effect(self.name, result)


def batched_logits(model, sequences: list[list[int]], pad_id: int, batch_size: int):
    """Yield (index, logits[len, ...]) per sequence: right-padded batches of similar length, so a
    causal model's logits at real positions equal those of an unpadded forward."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, : len(sequences[i])] = 1
        with torch.no_grad():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
        logits = out.logits if hasattr(out, "logits") else out[0]
        for row, i in enumerate(chunk):
            yield i, logits[row, : len(sequences[i])].float().cpu() if logits.dim() == 3 else logits[row].float().cpu()


def token_id(tokenizer, text: str, what: str) -> int:
    """The single token `text` encodes to (its last token when the tokenizer adds a prefix space)."""
    from harness.errors import UserError

    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise UserError(f"{what} {text!r} encodes to no token with this tokenizer")
    return ids[-1]
