from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register
from harness.attention import AttentionInputs, AttentionMethod, attention_override, banded_attend, rotate
from harness.methods.rope._common import rope_shape


@register
@dataclass
class DCA(AttentionMethod, LMMethod):
    """Dual Chunk Attention (ChunkLlama) — An et al. 2024, "Training-Free Long-Context Scaling of
    Large Language Models" (arXiv:2402.17463); mappings from HKUNLP/ChunkLlama
    `chunkllama_attn_replace.py`.

    Positions are cut into chunks of c = chunk_size − local_window tokens; a key sits at p_k mod c.
    A query attends to keys of its own chunk at p_q mod c (intra-chunk), to the previous chunk at
    min(p_q mod c + c, chunk_size) (successive-chunk), and to every older chunk at the constant
    chunk_size (inter-chunk), so no relative distance exceeds chunk_size < L. The official code
    merges the three flash-attention partials by their log-sum-exp, and so does this one (query
    blocks cut at chunk boundaries, one fused partial per mapping; see `banded_attend`). No
    attention-temperature term (the paper's results do not use one).

    chunk_size: None = 3L/4 (3072 for a 4k Llama-2). local_window: None = L/8 (512 there).
    """

    name = "dca"
    family = "rope"
    paper = "Training-Free Long-Context Scaling of Large Language Models (arXiv:2402.17463)"
    patches = frozenset({"attention", "kv_cache"})
    ranges = {"chunk_size": "[1, inf)", "local_window": "[1, inf)"}  # checked by params.build before any model loads
    chunk_size: int | None = field(default=None, metadata={"help": "None = 3/4 of the original context"})
    local_window: int | None = field(default=None, metadata={"help": "None = 1/8 of the original context"})

    def sizes(self, lm) -> tuple[int, int]:
        try:
            L = rope_shape(lm.model.config).original_max
        except ValueError as e:
            raise UserError(f"method dca: {e}") from None
        size = self.chunk_size or 3 * L // 4
        local = self.local_window if self.local_window is not None else L // 8
        if not 0 <= local < size:
            raise UserError(f"dca: local_window ({local}) must be below chunk_size ({size})")
        return size, local

    def resolved(self, lm, ctx) -> dict:
        size, local = self.sizes(lm)
        return {"chunk_size": size, "local_window": local, "chunk_len": size - local}

    def apply(self, lm, ctx):
        size, local = self.sizes(lm)
        return attention_override(lm.model, lambda a: self.attend(a, size, size - local), counter=lm.telemetry)

    @staticmethod
    def attend(a: AttentionInputs, chunk_size: int, c: int) -> torch.Tensor:
        def queries(r, q, qp):  # 0 intra-chunk, 1 successive chunk, 2 older chunks
            at = qp % c if r == 0 else (qp % c + c).clamp(max=chunk_size) if r == 1 else torch.full_like(qp, chunk_size)
            return rotate(q, *a.rope(at))

        # a key always sits at p_k mod c, whatever the rule
        return banded_attend(a, lambda qp, kp: (qp // c - kp // c).clamp(0, 2), queries, lambda r, kp: kp % c, period=c)
