from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.kv._cache import LayerCache, REFERENCE_BYTES
from harness.methods.kv._common import KVMethod
from harness.methods.kv._quant import quant_bytes, quantize_groups
from harness.methods.kv._run import Run

OUTLIER_BYTES = REFERENCE_BYTES + 4  # an fp16 value and its int32 index


def sparse_outliers(x: torch.Tensor, frac: float, axis: str) -> torch.Tensor:
    """GEAR's outlier mask S (bool, shape of x [1, H, n, d]): along each selection vector the top and
    bottom round(frac/2 · its length) entries. axis "channel" (keys): each channel of each head over
    the tokens; "token" (values): each token over its whole hidden vector (every head's channels)."""
    b, h, n, d = x.shape
    rows = (
        x.permute(0, 1, 3, 2).reshape(b, h * d, n) if axis == "channel" else x.permute(0, 2, 1, 3).reshape(b, n, h * d)
    )
    k = int(round(frac / 2 * rows.shape[-1]))
    mask = torch.zeros_like(rows, dtype=torch.bool)
    if k:
        for idx in (rows.topk(k, dim=-1).indices, rows.topk(k, dim=-1, largest=False).indices):
            mask.scatter_(-1, idx, True)
    if axis == "channel":
        return mask.reshape(b, h, d, n).permute(0, 1, 3, 2)
    return mask.reshape(b, n, h, d).permute(0, 2, 1, 3)


def quantized_backbone(x: torch.Tensor, outlier: torch.Tensor, axis: str, bits: int, group: int) -> torch.Tensor:
    """D with S restored: the outlier entries are set to their vector's mean (over the selection
    vector, outliers included), the result is quantized (keys per channel in groups of `group`
    tokens, values per token in groups of `group` channels of the hidden vector), and on
    dequantization the outliers get their exact values back (sparse, full precision)."""
    b, h, n, d = x.shape
    if axis == "channel":
        mean = x.mean(dim=2, keepdim=True)
        dq = quantize_groups(torch.where(outlier, mean, x), bits, group, "token")
    else:
        mean = x.permute(0, 2, 1, 3).reshape(b, n, h * d).mean(-1).view(b, 1, n, 1)
        flat = torch.where(outlier, mean, x).permute(0, 2, 1, 3).reshape(b, 1, n, h * d)
        dq = quantize_groups(flat, bits, group, "channel").reshape(b, n, h, d).permute(0, 2, 1, 3)
    return torch.where(outlier, x, dq)


def power_low_rank(r_mat: torch.Tensor, rank: int, loops: int, generator) -> torch.Tensor:
    """Rank-`rank` approximation of r_mat [..., n, d] by GEAR's power iteration: random Q,
    P = R Q, Q = Rᵀ P, `loops` times, P orthonormalised (QR) on the last; returns P Qᵀ."""
    if rank <= 0:
        return torch.zeros_like(r_mat)
    q = torch.randn(*r_mat.shape[:-2], r_mat.shape[-1], rank, generator=generator).to(r_mat)
    for i in range(loops):
        p = r_mat @ q
        if i == loops - 1:
            p = torch.linalg.qr(p).Q
        q = r_mat.transpose(-1, -2) @ p
    return p @ q.transpose(-1, -2)


@register
@dataclass
class GEAR(KVMethod):
    """GEAR — Kang et al. 2024, "GEAR: An Efficient KV Cache Compression Recipe for Near-Lossless
    Generative Inference of LLM" (arXiv:2403.05527); rule from opengear-project/GEAR
    `GEARLM/Simulated/compress_function.py` (pure-PyTorch simulation, as here), defaults of its
    `run_template_llama-3-8b.sh`: 2 bits, group 64, loop 3, prefill rank 4, decode rank 2, left
    0.02, streaming gap 64.

    X ≈ D + S + L (the paper's names). S, the sparse outliers: the top and bottom left/2 fraction of
    entries of each channel for keys (over the block's tokens) and of each token for values (over
    its hidden vector, every head's channels), kept in sparse full precision. D, the quantized
    backbone: X with the outliers set to their vector's mean (as `gears_channelQ`/`gears_tokenQ`
    do), quantized KCVT (keys per channel in groups of group_size tokens, values per token in groups
    of group_size channels of the hidden vector); on dequantization the outliers get their exact
    values back. L: the rank-r power-iteration approximation of the residual X − (D + S), per head
    (`gearslkivi_*Q_new`). Outlier counts are round(left/2 · vector length) per side; the official
    code uses int(left/2 · H·d) along both axes [we take the paper's per-vector fraction]. Tokens stay full precision in
    a streaming buffer and are compressed a block of streaming_gap at a time (prefill: every full
    block, rank `prefill_rank`; decoding: rank `rank`). Bytes: bits + fp16 scale and zero per group
    + outliers (fp16 value + int32 index) + the rank factors at fp16 + the fp16 buffer.
    Compresses: prefill and decoding. The budget is not used (bits)."""

    name = "gear"
    paper = "GEAR: An Efficient KV Cache Compression Recipe for Near-Lossless Generative Inference of LLM (arXiv:2403.05527)"
    compresses = "both"
    budget_unit = "bits"
    smoke_args = {"streaming_gap": "16", "group_size": "16"}
    ranges = {
        "bits": "[1, 16]",
        "group_size": "[1, inf)",
        "loop": "[0, inf)",
        "prefill_rank": "[0, inf)",
        "rank": "[0, inf)",
        "left": "[0, 1]",
        "streaming_gap": "[1, inf)",
    }  # checked by params.build before any model loads
    bits: int = 2
    group_size: int = 64
    loop: int = 3
    prefill_rank: int = 4
    rank: int = 2
    left: float = field(default=0.02, metadata={"help": "outlier fraction kept exactly (top and bottom halves)"})
    streaming_gap: int = field(default=64, metadata={"help": "tokens buffered full precision between compressions"})

    def __post_init__(self):
        super().__post_init__()
        if self.streaming_gap % self.group_size:
            raise ValueError("streaming_gap must be a multiple of group_size (keys are grouped by tokens)")

    def compress_block(self, x: torch.Tensor, axis: str, rank: int, gen) -> tuple[torch.Tensor, int]:
        """x [1, H, n, d] -> (D + S + L, outlier count); axis "channel" for keys, "token" for values."""
        s = sparse_outliers(x, self.left, axis)
        ds = quantized_backbone(x, s, axis, self.bits, self.group_size)
        low = power_low_rank(x - ds, rank, self.loop, gen)
        return ds + low, int(s.sum())

    def flush(self, lc: LayerCache, run: Run, rank: int) -> None:
        p = run.protect
        a = p + lc.state["done"]
        n = (lc.n - a) // self.streaming_gap * self.streaming_gap
        if n <= 0:
            return
        k, v = lc.k.clone(), lc.v.clone()
        k[:, :, a : a + n], ok = self.compress_block(k[:, :, a : a + n], "channel", rank, run.generator)
        v[:, :, a : a + n], ov = self.compress_block(v[:, :, a : a + n], "token", rank, run.generator)
        lc.replace(k=k, v=v)
        h, d = k.shape[1], k.shape[-1]
        lc.state["done"] += n
        lc.state["bytes"] += (
            quant_bytes(n * h * d, self.bits, self.group_size) * 2
            + (ok + ov) * OUTLIER_BYTES
            + 2 * h * rank * (n + d) * REFERENCE_BYTES
        )

    def compress_prefill(self, lc: LayerCache, run: Run) -> None:
        lc.state.update(done=0, bytes=0.0)
        self.flush(lc, run, self.prefill_rank)

    def compress_decode(self, lc: LayerCache, run: Run) -> None:
        self.flush(lc, run, self.rank)

    def layer_bytes(self, lc: LayerCache, run: Run) -> float:
        h, d = lc.k.shape[1], lc.k.shape[-1]
        return lc.state.get("bytes", 0.0) + 2 * (lc.n - lc.state.get("done", 0)) * h * d * REFERENCE_BYTES
