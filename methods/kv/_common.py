"""The engine of the KV-cache family: a cache the engine owns and a policy (the method) over it.

While a kv method's context is active, every attention layer runs `_attention_forward` (_driver.py) and
the LM's two batch hooks run a manual loop, one prompt at a time (per-head eviction makes batch
rows ragged, and the papers' own loops run at batch 1 too):

    prefill the context in query chunks of PREFILL_CHUNK (the cache holds every context token)
      -> method.compress_prefill(layer, run) for every layer          (methods that compress at prefill)
    feed the question, the scored continuation or the generated tokens
      -> method.compress_decode(layer, run) inside each layer, after each fed chunk  (while decoding)
         or, for a method with `all_layers`, once after the forward with every layer's cache as
         one (Run.all_layers: the layers share one SlotStore, so an eviction is one operation per
         tensor for the whole model instead of one per layer)

Positions. Keys are cached after RoPE at each token's original position, so evicting a token
never moves the others and new tokens continue at the original length (kvpress's pipeline). A
method with `positions = "cache"` (StreamingLLM) re-rotates kept keys exactly by the position delta
(RoPE(a)·RoPE(b) = RoPE(a+b), kvpress's KeyRerotationPress) and feeds new tokens at the cache length;
a shift its keys still owe (`rope_shift`) is applied to the fed tokens' RoPE instead (`Run.shifted_rope`).

Attention. SDPA, unless the method accumulates attention statistics (`accumulates`); then the
probabilities are computed explicitly by query chunk (at most STAT_ELEMENTS logits at a time: never
an L x L matrix at long context) and `method.observe` folds each chunk into a per-token score that
moves with its token when tokens are evicted. Scores are per KV head (summed over its query heads).

Budgets. `budget` <= 1 is a fraction of the context's tokens, > 1 a token count (per layer and
head). Tasks override it per call with `LM.kv_request_for(KVRequest(budget=...))` (1.0: dense, the
same loop with no compression: the baseline the kv_compression task times and scores against). The
request also says how many final prompt tokens are the question (`question_tokens`: fed after
compression, the query-agnostic protocol of kvpress) and, when scoring text, how many final tokens
are decoded one at a time (`decode_tokens`; default half the text, so perplexity under a kv method
measures decoding with the compressed cache). While a method is applied, `LM.kv_policy` is its
Driver (one per LM: a second kv method is refused).

Telemetry (sums over calls; tasks read the deltas around one call): kv.calls, kv.context_tokens,
kv.kept_tokens (kept context tokens after prefill compression, mean over layers and heads),
kv.bytes and kv.dense_bytes (counted at REFERENCE_BYTES per element, as the papers' fp16 caches
hold them; quantizers count bits, scales and zero points), kv.compressed_calls, kv.peak_cache_bytes
(a max: tensors the cache held), kv.prefill_s, kv.decode_s, kv.decode_steps, kv.policy_s (time in the
method's own bookkeeping while decoding). On a GPU every timing synchronizes the device first
(`device_clock`), so it is the device's time, not the host's time to enqueue the kernels.

Files: _cache.py (SlotStore, LayerCache), _run.py (Run: one prompt's caches and attention),
_driver.py (the patched attention, Driver, kv_loop), _eviction.py (budget, top-k, recent window,
H2O's split), _rerotation.py (RoPE re-rotation), _quant.py (fake quantization); this file holds
the methods' base class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from harness.methods.kv._cache import REFERENCE_BYTES, LayerCache
from harness.methods.kv._driver import kv_loop
from harness.methods.kv._eviction import group_sum

from harness.interfaces import LMMethod
from harness.projections import projections

if TYPE_CHECKING:
    from harness.methods.kv._run import Run


CALIB_FACTS, CALIB_QUERIES = 4, 2  # per calibration row: key->value facts, then questions with answers


def calibration_rows(lm, seed: int, sequences: int, tokens: int) -> torch.Tensor:
    """[sequences, n] token ids shaped like the zoo's training rows (harness.zoo.rows: preamble,
    haystack with key->value facts, questions with their answers), n = tokens capped at the model's
    context: the fit stages' calibration data (training-side seeds, never evaluation text). Why not
    haystack text alone (the first version): it holds no digits, no question and no answer prefix,
    so codebooks or bases fit on it have no centroid or direction near those tokens' keys (a
    needle's last digit coded at 40 % relative error in layer 0) and lose the needle while staying
    lossless on filler text; the papers calibrate on general text, numbers included."""
    from harness.zoo.rows import RowMaker

    n = min(tokens, lm.model.config.max_position_embeddings)
    maker, ids = RowMaker(lm.tokenizer, seed), []
    while len(ids) < n * sequences:
        ids += maker.row(n, CALIB_FACTS, CALIB_QUERIES)[0]
    return torch.tensor(ids[: n * sequences]).view(sequences, n)


def projection_outputs(lm, ids: torch.Tensor, batch: int = 4) -> dict[str, torch.Tensor]:
    """ "<layer>.k" / "<layer>.v" -> the key / value projections' outputs without their bias (pre-RoPE)
    [N, H_kv·d] of every token of ids [sequences, n], float32 on the CPU: a fit stage's calibration
    activations."""
    from harness.projections import attention_modules

    seen: dict[str, list[torch.Tensor]] = {}

    def hook(key, bias):
        def f(module, args, out):
            seen.setdefault(key, []).append((out if bias is None else out - bias).detach().flatten(0, 1).float().cpu())

        return f

    handles = [
        p.register_forward_hook(hook(f"{m.layer_idx}.{kv}", p.bias))
        for m in attention_modules(lm.model)
        for kv, p in (("k", m.k_proj), ("v", m.v_proj))
    ]
    try:
        with torch.no_grad():
            for rows in ids.split(batch):
                lm.model(input_ids=rows.to(lm.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in seen.items()}


@dataclass
class KVMethod(LMMethod):
    """Base of the kv family. Subclasses set `compresses` ("prefill", "decode" or "both"),
    `budget_unit` ("tokens": the budget is kept tokens; "bytes": bytes relative to dense;
    "bits": fixed by the method's bit width, the budget is not used), and override the hooks."""

    ranges = {"budget": "(0, 1]"}  # checked by params.build before any model loads
    family: ClassVar[str] = "kv"
    patches: ClassVar[frozenset[str]] = frozenset({"kv_cache"})
    compresses: ClassVar[str] = "prefill"
    budget_unit: ClassVar[str] = "tokens"
    accumulates: ClassVar[bool] = False  # needs attention probabilities (observe)
    all_layers: ClassVar[bool] = False  # compress_decode gets every layer at once (Run.all_layers)
    positions: ClassVar[str] = "original"  # or "cache" (cache-relative, keys re-rotated)
    # reads the layers' q_proj/k_proj/v_proj/o_proj linear layers itself (a fit stage's calibration,
    # rewritten projections): refused on fused layouts and query/key norms (harness.compat)
    separate_projections: ClassVar[bool] = False
    engine: ClassVar[bool] = True  # runs in the kv engine's attention (harness.compat checks the layers)
    smoke_args: ClassVar[dict[str, str]] = {"budget": "0.5"}
    budget: float = field(default=0.5, metadata={"help": "kept tokens: <= 1 a fraction of the context, > 1 a count"})

    def __post_init__(self):
        if not self.budget > 0:
            raise ValueError("budget must be positive (a fraction <= 1 or a token count > 1)")

    # -- hooks -------------------------------------------------------------------------------
    def rope_shift(self, run: "Run") -> int:
        """Positions by which the fed tokens' RoPE is advanced beyond the positions they are fed at
        (StreamingLLM: the window shift its cached keys have not been re-rotated by); 0: none."""
        return 0

    def query_window(self) -> int:
        """Queries of the context's end kept per layer for compress_prefill (SnapKV's window)."""
        return 0

    def observe(self, lc: LayerCache, probs: torch.Tensor, logits: torch.Tensor, run: "Run") -> None:
        """Fold one query chunk's attention [1, H_kv, g, c, n] into lc's score (default: H2O's
        accumulated attention, the column sums)."""
        lc.add_score(group_sum(probs))

    def compress_prefill(self, lc: LayerCache, run: "Run") -> None:
        """Compress the prefilled context; lc as in compress_decode."""

    def compress_decode(self, lc: LayerCache, run: "Run") -> None:
        """Back to the budget after a decoding forward; lc is one layer's cache, or every layer's
        ([L, H_kv, n, ...]) when the method sets `all_layers`."""

    def attend_cache(self, lc: LayerCache, q, k, v, pos, run: "Run") -> torch.Tensor | None:
        """A method that changes how a chunk enters the cache or how the cache is read (DMC's
        merges, LESS's recurrent state) returns the layer's output [1, H, c, d] for the rotated
        chunk q/k/v and its positions pos [1, H_kv, c] (run.append_attend is the engine's own step);
        None: the engine appends and attends. Not called on dense runs."""
        return None

    def project_q(self, module, hidden: torch.Tensor, run: "Run"):
        """Query projection (before norms and RoPE): [b, c, H*d], through the layer's own
        projection whatever its layout (harness.projections)."""
        return projections(module).q(hidden)

    def project_kv(self, module, hidden: torch.Tensor, run: "Run"):
        """Key and value projections (before norms and RoPE): [b, c, H_kv*d] each."""
        return projections(module).kv(hidden)

    def layer_bytes(self, lc: LayerCache, run: "Run") -> float:
        """Bytes this layer's cache would hold (fp16 elements for an uncompressed slot)."""
        return 2 * lc.kept() * lc.k.shape[1] * lc.k.shape[-1] * REFERENCE_BYTES

    def prepare(self, lm) -> None:
        """Called once on apply (e.g. a weight SVD)."""

    # -- the loop ----------------------------------------------------------------------------
    def apply(self, lm, ctx):
        return kv_loop(lm, self)

    def check_effect(self, lm, ctx, result) -> str | None:
        t = lm.telemetry
        if not t["kv.compressed_calls"]:
            return "no prompt went through the compressed KV cache"
        if self.budget_unit == "tokens" and not t["kv.compressed_kept_tokens"] < t["kv.compressed_context_tokens"]:
            return "the cache kept every context token (nothing was evicted)"
        if self.budget_unit != "tokens" and not t["kv.compressed_bytes"] < t["kv.compressed_dense_bytes"]:
            return "the cache holds as many bytes as the dense cache"
        return None
