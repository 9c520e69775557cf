from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from harness.projections import attention_modules
from harness.errors import UserError
from harness.registry import register
from harness.methods.kv._cache import LayerCache, REFERENCE_BYTES
from harness.methods.kv._common import KVMethod, calibration_rows
from harness.methods.kv._run import Run

FIT_TEXT_SEED = 240_503  # calibration corpus seed (< EVAL_SEED_BASE): never evaluation text
ROWS = 4096  # points per distance matrix chunk


def nearest(x: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """Encode: x [G, N, c], codebooks [G, K, c] -> index [G, N] of the L2-nearest centroid."""
    sq = books.square().sum(-1)[:, None, :]  # ||x||² is the same for every centroid
    return torch.cat([(sq - 2 * part @ books.transpose(1, 2)).argmin(-1) for part in x.split(ROWS, dim=1)], dim=1)


def lookup(books: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Decode: codebooks [G, K, c], index [G, N] -> centroids [G, N, c]."""
    return books.gather(1, idx[..., None].expand(*idx.shape, books.shape[-1]))


def draw(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One index per row of p [G, N] (non-negative, positive sums), drawn with probability ∝ p."""
    c = p.cumsum(-1)
    u = torch.rand(p.shape[0], 1, generator=gen, dtype=p.dtype) * c[:, -1:]
    return torch.searchsorted(c, u, right=True).clamp_max(p.shape[1] - 1)


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator, weights: torch.Tensor | None = None):
    """Weighted k-means, one problem per group: x [G, N, c], weights [G, N] (positive; None: 1) ->
    centroids [G, k, c]. k-means++ seeding (next centre drawn ∝ w·D²), then `iters` Lloyd steps
    (centroid = w-weighted mean of its points; an empty cluster keeps its centroid)."""
    g, n, c = x.shape
    w = torch.ones(g, n, dtype=x.dtype) if weights is None else weights.to(x.dtype)
    pick = draw(w, gen)
    books = x.gather(1, pick[..., None].expand(g, 1, c))
    d2 = (x - books).square().sum(-1)
    for _ in range(1, k):
        p = w * d2
        pick = draw(torch.where(p.sum(-1, keepdim=True) > 0, p, w), gen)
        new = x.gather(1, pick[..., None].expand(g, 1, c))
        books, d2 = torch.cat([books, new], dim=1), torch.minimum(d2, (x - new).square().sum(-1))
    for _ in range(iters):
        idx = nearest(x, books)
        sums = torch.zeros_like(books).scatter_add_(1, idx[..., None].expand(g, n, c), w[..., None] * x)
        mass = torch.zeros(g, k, dtype=x.dtype).scatter_add_(1, idx, w)
        books = torch.where(mass[..., None] > 0, sums / mass.clamp_min(1e-30)[..., None], books)
    return books


def fake_quantize(x: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """x [..., G·c] -> every group of c contiguous channels replaced by its nearest centroid."""
    g, _, c = books.shape
    groups = x.reshape(-1, g, c).transpose(0, 1)
    return lookup(books, nearest(groups, books)).transpose(0, 1).reshape(x.shape)


@register
@dataclass
class CoupledQuant(KVMethod):
    """CQ — Zhang et al. 2024, "KV Cache is 1 Bit Per Channel: Efficient Large Language Model Inference
    with Coupled Quantization" (arXiv:2405.03917; no official code: scheme from secondary notes).

    Each layer's pre-RoPE keys and its values [H_kv·d channels] are split into contiguous groups of
    `coupling` = c channels; each group of a token is stored as one `bits` = b bit index into that
    layer's, group's and K-or-V codebook of 2^b centroids in R^c (encode: L2-nearest centroid;
    decode: lookup), so b/c bits per channel (CQ-8c8b = 1, 4c8b = 2, 2c8b = 4). Codebooks: k-means
    (k-means++ seeding, `kmeans_iters` Lloyd steps, seed 0) on calibration activations, `fisher`:
    each token's group weighted by gᵀg, g = ∂L/∂(group) of the LM loss (the paper's main variant).

    Fit (`harness fit`): `calib_sequences` × `calib_tokens` tokens (capped at the model's context)
    of rows shaped like the zoo's training data (haystack, key->value facts, questions, answers:
    `calibration_rows`) instead of the paper's 16 × 2048 WikiText-2 tokens; one backward
    pass for the Fisher weights; the codebooks are the artifact. Every token of the cache is coded
    (keys before RoPE, in the projection; IntactKV's protected prefix stays lossless); simulated
    exactly on CPU (fake quantization) with bytes counted as b bits per group. Not counted: the
    codebooks (2·L·G·2^b·c fp16 values per model, a fixed cost the paper leaves out of bits per
    channel; `resolved` reports it). Not implemented: the paper's optional full-precision window of
    recent tokens. The budget is not used (bits)."""

    separate_projections = True  # (harness.compat refuses other layouts)

    name = "coupled_quant"
    paper = "KV Cache is 1 Bit Per Channel: Efficient Large Language Model Inference with Coupled Quantization (arXiv:2405.03917)"
    compresses = "both"
    budget_unit = "bits"
    smoke_args = {"coupling": "4", "bits": "4", "calib_sequences": "2", "calib_tokens": "64", "kmeans_iters": "3"}
    ranges = {
        "coupling": "[1, inf)",
        "bits": "[1, 16]",
        "calib_sequences": "[1, inf)",
        "calib_tokens": "[1, inf)",
        "kmeans_iters": "[1, inf)",
    }  # checked by params.build before any model loads
    coupling: int = field(default=8, metadata={"help": "c: contiguous channels coded jointly"})
    bits: int = field(default=8, metadata={"help": "b: bits per group of c channels (b/c bits per channel)"})
    fisher: bool = field(default=True, metadata={"help": "Fisher-weighted k-means (else plain k-means)"})
    calib_sequences: int = 16
    calib_tokens: int = field(
        default=2048, metadata={"help": "tokens per calibration sequence (capped at the model's)"}
    )
    kmeans_iters: int = field(default=20, metadata={"help": "Lloyd iterations after k-means++ [our choice]"})

    def __post_init__(self):
        super().__post_init__()
        if not (1 <= self.bits <= 16 and self.coupling >= 1):
            raise ValueError("bits must be in 1..16 and coupling positive")
        if min(self.calib_sequences, self.calib_tokens, self.kmeans_iters) < 1:
            raise ValueError("calib_sequences, calib_tokens and kmeans_iters must be positive")
        self._books: dict[str, torch.Tensor] | None = None
        self._coded = 0

    # -- fit stage ---------------------------------------------------------------------------------
    def needs_fit(self, lm, ctx) -> bool:
        return True

    def fit_params(self, lm, ctx) -> dict:
        keys = ("coupling", "bits", "fisher", "calib_sequences", "calib_tokens", "kmeans_iters")
        return {k: getattr(self, k) for k in keys}

    def calibration_ids(self, lm) -> torch.Tensor:
        return calibration_rows(lm, FIT_TEXT_SEED, self.calib_sequences, self.calib_tokens)

    def fit_data_hash(self, lm, ctx) -> str:
        return hashlib.sha256(self.calibration_ids(lm).numpy().tobytes()).hexdigest()

    def activations(self, lm) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """ "<layer>.k" / "<layer>.v" -> (pre-RoPE activations [N, H_kv·d], Fisher g² [N, H_kv·d])."""
        mods = attention_modules(lm.model)
        seen: dict[str, list] = {}

        def hook(key):
            def f(module, args, out):  # a zero leaf added to the output: its gradient is ∂L/∂out
                delta = torch.zeros_like(out, requires_grad=self.fisher)
                seen.setdefault(key, []).append((out.detach(), delta))
                return out + delta

            return f

        handles = [
            getattr(m, f"{kv}_proj").register_forward_hook(hook(f"{m.layer_idx}.{kv}")) for m in mods for kv in "kv"
        ]
        acts: dict[str, list] = {}
        try:
            for batch in self.calibration_ids(lm).split(4):
                seen.clear()
                batch = batch.to(lm.device)
                with torch.set_grad_enabled(self.fisher):
                    loss = lm.model(input_ids=batch, labels=batch, use_cache=False).loss
                    keys = list(seen)
                    grads = torch.autograd.grad(loss, [seen[k][0][1] for k in keys]) if self.fisher else None
                for i, key in enumerate(keys):
                    out = seen[key][0][0]
                    g2 = grads[i].square() if grads is not None else torch.ones_like(out)
                    acts.setdefault(key, []).append((out.flatten(0, 1).float().cpu(), g2.flatten(0, 1).float().cpu()))
        finally:
            for h in handles:
                h.remove()
        return {k: (torch.cat([a for a, _ in v]), torch.cat([g for _, g in v])) for k, v in acts.items()}

    def fit(self, lm, ctx, log=print):
        gen, books, errors = torch.Generator().manual_seed(0), {}, {}
        for key, (x, g2) in self.activations(lm).items():
            n, ch = x.shape
            if ch % self.coupling:
                raise UserError(f"coupled_quant: {ch} channels per layer do not split into groups of {self.coupling}")
            groups = x.view(n, -1, self.coupling).transpose(0, 1).contiguous()  # [G, N, c]
            w = g2.view(n, -1, self.coupling).sum(-1).T  # gᵀg per token and group
            w = (w / w.mean(-1, keepdim=True).clamp_min(1e-30)).clamp_min(1e-6)
            books[key] = kmeans(groups, 2**self.bits, self.kmeans_iters, gen, w)
            errors[key] = float((fake_quantize(x, books[key]) - x).square().sum() / x.square().sum())
            log(
                f"coupled_quant {key}: {2**self.bits} centroids x {groups.shape[0]} groups, rel. error {errors[key]:.4f}"
            )

        def write(folder):
            from safetensors.torch import save_file

            save_file(books, str(folder / "codebooks.safetensors"))

        return {"calibration_relative_error": errors}, write

    def use_artifact(self, payload, folder) -> None:
        from safetensors.torch import load_file

        self._books = load_file(str(folder / "codebooks.safetensors"))

    # -- evaluation --------------------------------------------------------------------------------
    def prepare(self, lm) -> None:
        if self._books is None:
            raise UserError("coupled_quant has no codebooks: run `harness fit --method coupled_quant` first")
        self._coded = 0

    def project_kv(self, module, hidden: torch.Tensor, run: Run):
        k, v = module.k_proj(hidden), module.v_proj(hidden)
        if run.dense:
            return k, v
        keep = min(hidden.shape[1], max(0, run.protect - run.next_pos))  # IntactKV's lossless prefix
        out = []
        for kv, x in (("k", k), ("v", v)):
            books = self._books[f"{module.layer_idx}.{kv}"].to(x)
            x = x.clone()
            x[:, keep:] = fake_quantize(x[:, keep:], books)
            out.append(x)
        self._coded += (hidden.shape[1] - keep) * hidden.shape[0]
        return tuple(out)

    def layer_bytes(self, lc: LayerCache, run: Run) -> float:
        ch = lc.k.shape[1] * lc.k.shape[-1]
        exact = lc.n if run.dense else min(run.protect, lc.n)
        return 2 * (lc.n - exact) * ch / self.coupling * self.bits / 8 + 2 * exact * ch * REFERENCE_BYTES

    def resolved(self, lm, ctx) -> dict:
        books = self._books or {}
        return {
            "bits_per_channel": self.bits / self.coupling,
            "codebook_bytes": sum(b.numel() for b in books.values()) * REFERENCE_BYTES,
        }

    def check_effect(self, lm, ctx, result) -> str | None:
        if not self._coded:
            return "no key or value went through the codebooks"
        return super().check_effect(lm, ctx, result)
