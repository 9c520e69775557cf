from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from harness.errors import UserError
from harness.interfaces import LMMethod
from harness.registry import register
from harness.synthetic import Corpus
from harness.attention import _rotary_module, rotate
from harness.projections import projections
from harness.methods.rope._common import rope_shape

CALIBRATION_TEXT_SEED = 515151  # training-side text for the calibration bias (never evaluation text)
PRUNED, PROMPTS, CALLS = "hcm.pruned_tokens", "hcm.prompts", "hcm.hook_calls"


@dataclass
class Chunk:
    """A node of the merge tree: hidden states of its upper layer, positions, which tokens may be
    pruned (context, not the shared prefix / suffix), and the keys/values of every layer so far."""

    h: torch.Tensor  # [1, n, D]
    pos: torch.Tensor  # [n]
    reducible: torch.Tensor  # [n] bool
    kv: list  # per processed layer: (keys [1, kv_heads, n, d] rotated, values)

    def keep(self, mask: torch.Tensor) -> None:
        """Prune tokens from this layer and, propagatively, from every lower layer's cache."""
        self.h, self.pos, self.reducible = self.h[:, mask], self.pos[mask], self.reducible[mask]
        self.kv = [(k[:, :, mask], v[:, :, mask]) for k, v in self.kv]


def attention_block(layer, rotary, h, pos):
    """One decoder layer's attention half (causal in sequence order, RoPE at `pos`), returning the
    new hidden states, this layer's rotated keys and values, and the significance metric: the last
    token's attention logits q·k/√d, max over heads."""
    p = projections(layer.self_attn)  # the layer's own projections and query/key norms (Qwen3)
    x = layer.input_layernorm(h)
    hd = p.head_dim
    q, k, v = p.project(x)
    cos, sin = rotary(x, pos[None])
    q, k = rotate(q, cos.to(q.dtype), sin.to(q.dtype)), rotate(k, cos.to(q.dtype), sin.to(q.dtype))
    rep = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = torch.nn.functional.scaled_dot_product_attention(q, kr, vr, is_causal=True, scale=p.scaling)
    h = h + p.output(out)
    metric = (q[0, :, -1:] @ kr[0].transpose(-1, -2))[:, 0] / math.sqrt(hd)
    return h, k, v, metric.max(0).values


@torch.no_grad()
def homer_prefill(
    model, ids: list[int], max_chunk_len: int, target_len: int, warmup: int, P: int, S: int, bias: torch.Tensor | None
):
    """HOMER's hierarchical merge of one prompt (prefix = first P tokens, suffix = last S).
    Returns (per-layer (keys, values), positions of the kept tokens, last-token logits, layers
    per tree level above the leaves)."""
    layers, rotary = model.model.layers, _rotary_module(model)
    device = model.model.embed_tokens.weight.device
    prefix, context, suffix = ids[:P], ids[P : len(ids) - S], ids[len(ids) - S :]
    C, eff_max = len(context), max_chunk_len - P - S
    merging = len(layers) - warmup
    count = max(1, math.ceil(C / eff_max))
    height = math.ceil(math.log2(count))
    count = 2**height
    e = math.ceil(C / count)
    per = merging // (height + 1)
    leftover = merging - per * (height + 1)

    def leaf(i):
        ctx = context[i * e : min((i + 1) * e, C)]
        pos = torch.arange(P + len(ctx) + S)
        if count > 1:  # every chunk's suffix sits at the same positions
            pos[len(pos) - S :] = P + e + torch.arange(S)
        red = torch.zeros(len(pos), dtype=torch.bool)
        red[P : P + len(ctx)] = True
        return prefix + ctx + suffix, pos.to(device), red.to(device)

    def run(chunk: Chunk, which, target: int) -> Chunk:
        drop = chunk.h.shape[1] - target
        for j, li in enumerate(which):
            h, k, v, metric = attention_block(layers[li], rotary, chunk.h, chunk.pos)
            chunk.h, chunk.kv = h, chunk.kv + [(k, v)]
            if drop > 0 and j == len(which) - 1:
                sig = metric.float()
                if bias is not None:
                    sig = sig - bias[li].to(sig.device)[chunk.pos[-1] - chunk.pos]
                sig = sig.masked_fill(~chunk.reducible, math.inf)
                mask = torch.ones(len(sig), dtype=torch.bool, device=sig.device)
                mask[sig.topk(drop, largest=False).indices] = False
                chunk.keep(mask)
            layer = layers[li]
            chunk.h = chunk.h + layer.mlp(layer.post_attention_layernorm(chunk.h))
        return chunk

    def merge(l: Chunk, r: Chunk) -> Chunk:
        def join(a, b):
            return torch.cat(
                [
                    (a[:, :P] + b[:, :P]) / 2,
                    a[:, P : a.shape[1] - S],
                    b[:, P : b.shape[1] - S],
                    (a[:, a.shape[1] - S :] + b[:, b.shape[1] - S :]) / 2,
                ],
                dim=1,
            )

        kv = [
            (
                join(lk.transpose(1, 2), rk.transpose(1, 2)).transpose(1, 2),
                join(lv.transpose(1, 2), rv.transpose(1, 2)).transpose(1, 2),
            )
            for (lk, lv), (rk, rv) in zip(l.kv, r.kv)
        ]
        nl = len(l.pos)
        pos = torch.cat([l.pos[: nl - S], r.pos[P:]])
        red = torch.cat([l.reducible[: nl - S], r.reducible[P:]])
        return Chunk(join(l.h, r.h), pos, red, kv)

    def tree(first: int, n: int, height: int, target: int) -> Chunk:
        if n == 1:
            tokens, pos, red = leaf(first)
            emb = model.model.embed_tokens(torch.tensor([tokens], device=device))
            return run(Chunk(emb, pos, red, []), range(per + leftover + warmup), target)
        default = P + eff_max // 2 + S
        right_len = len(leaf(first + n // 2)[0])
        if right_len < default:  # a short right chunk keeps everything; the left gets the rest
            lt, rt = max_chunk_len - (right_len - P - S), right_len
        else:
            lt = rt = default
        merged = merge(tree(first, n // 2, height - 1, lt), tree(first + n // 2, n // 2, height - 1, rt))
        return run(merged, [leftover + warmup + per * height + j for j in range(per)], target)

    root = tree(0, count, height, min(target_len, len(ids)))
    logits = model.lm_head(model.model.norm(root.h[:, -1:]))[0, -1]
    return root.kv, root.pos, logits, per


@register
@dataclass
class HCM(LMMethod):
    """Hierarchical Context Merging (HOMER) — Song et al. 2024, "Hierarchical Context Merging:
    Better Long Context Understanding for Pre-trained LLMs" (ICLR 2024, arXiv:2404.10308); rule
    from alinlab/HOMER `src/homer/patch_llama.py`, `chunk.py`. Training-free.

    The prompt's context (all but a shared prefix and suffix) is split into 2^h equal chunks, each
    with the prefix and suffix attached (positions 0…, every chunk's suffix at the same positions).
    Chunks run the first warmup + leftover + m layers alone (m = ⌊(layers − warmup)/(h + 1)⌋);
    at each node's last layer, after attention, the context tokens with the lowest significance —
    the last token's attention logit q·k/√d, max over heads, minus a calibration bias by relative
    position — are pruned down to the node's target length, from that layer's hidden states and,
    propagatively, from every lower layer's cache. Sibling chunks then merge (prefix and suffix
    states averaged, contexts concatenated, positions kept) and run the next m layers, up to the
    root, whose cache (at most target_len tokens) conditions decoding; new tokens continue at the
    last kept position + 1. Scoring (perplexity) follows the official protocol: the first L tokens
    plainly, then parts of L/2 tokens, each conditioned on the merged cache of all before it
    (affixes = the first and last `prefix_len` / `suffix_len` tokens before the part).

    Calibration: the official bias files (per model, not published in reachable form) are replaced
    by an estimate of the same quantity — the mean significance at each relative distance over
    `calibration_windows` windows of max_chunk_len tokens of training-side text through the plain
    model (0 = no calibration). A model with fewer layers than warmup + h + 1 gets m = 0 as in
    the official code: upper merges have no layer to prune in and the cache exceeds target_len.

    max_chunk_len: None = L/2 (2048 for Llama-2, official). target_len: None = max_chunk_len.
    layers_warmup: None = 3/8 of the layers (12 of Llama-2-7B's 32, official).
    prefix_len, suffix_len: the shared affixes (the harness's tasks end with the question);
    None = max_chunk_len/8 (this project's choice: holds the needle question).
    """

    name = "hcm"
    family = "rope"
    paper = "Hierarchical Context Merging: Better Long Context Understanding for Pre-trained LLMs (arXiv:2404.10308)"
    patches = frozenset({"attention", "kv_cache", "prefill"})
    smoke_args = {"max_chunk_len": "96", "layers_warmup": "0", "calibration_windows": "2"}
    ranges = {
        "max_chunk_len": "[1, inf)",
        "target_len": "[1, inf)",
        "layers_warmup": "[0, inf)",
        "prefix_len": "[0, inf)",
        "suffix_len": "[0, inf)",
        "calibration_windows": "[0, inf)",
    }  # checked by params.build before any model loads
    max_chunk_len: int | None = field(default=None, metadata={"help": "None = half the original context"})
    target_len: int | None = field(default=None, metadata={"help": "final cache length; None = max_chunk_len"})
    layers_warmup: int | None = field(default=None, metadata={"help": "layers before any merge; None = 3/8"})
    prefix_len: int | None = field(default=None, metadata={"help": "shared prefix tokens; None = max_chunk_len/8"})
    suffix_len: int | None = field(default=None, metadata={"help": "shared suffix tokens; None = max_chunk_len/8"})
    calibration_windows: int = field(default=8, metadata={"help": "windows for the calibration bias; 0 = none"})

    def sizes(self, lm) -> dict:
        try:
            L = rope_shape(lm.model.config).original_max
        except ValueError as e:
            raise UserError(f"method hcm: {e}") from None
        M = self.max_chunk_len or L // 2
        n_layers = len(lm.model.model.layers)
        out = {
            "max_chunk_len": M,
            "target_len": self.target_len or M,
            "layers_warmup": self.layers_warmup if self.layers_warmup is not None else round(3 * n_layers / 8),
            "prefix_len": self.prefix_len if self.prefix_len is not None else M // 8,
            "suffix_len": self.suffix_len if self.suffix_len is not None else M // 8,
            "original": L,
        }
        if out["suffix_len"] < 1 or out["prefix_len"] + out["suffix_len"] >= M or out["layers_warmup"] >= n_layers:
            raise UserError(
                f"hcm: need suffix_len >= 1, prefix_len + suffix_len < max_chunk_len and "
                f"layers_warmup < {n_layers} layers (got {out})"
            )
        return out

    def resolved(self, lm, ctx) -> dict:
        return self.sizes(lm)

    @torch.no_grad()
    def calibrate(self, lm, M: int) -> torch.Tensor | None:
        """bias[layer, r]: mean significance of the key r tokens before the last token."""
        if not self.calibration_windows:
            return None
        corpus, ids = Corpus(CALIBRATION_TEXT_SEED), []
        while len(ids) < M * self.calibration_windows:
            ids += lm.encode(" " + corpus.text(50))
        model, rotary = lm.model, _rotary_module(lm.model)
        total = torch.zeros(len(model.model.layers), M)
        pos = torch.arange(M, device=lm.device)
        for w in range(self.calibration_windows):
            h = model.model.embed_tokens(torch.tensor([ids[w * M : (w + 1) * M]], device=lm.device))
            for li, layer in enumerate(model.model.layers):
                h, _, _, metric = attention_block(layer, rotary, h, pos)
                h = h + layer.mlp(layer.post_attention_layernorm(h))
                total[li] += metric.float().flip(0).cpu()  # index r = distance from the last token
        return total / self.calibration_windows

    def apply(self, lm, ctx):
        return self._hooks(lm)

    @contextlib.contextmanager
    def _hooks(self, lm):
        s = self.sizes(lm)
        bias = self.calibrate(lm, s["max_chunk_len"])

        def prefill(ids):
            kv, pos, logits, per = homer_prefill(
                lm.model,
                ids,
                s["max_chunk_len"],
                s["target_len"],
                s["layers_warmup"],
                s["prefix_len"],
                s["suffix_len"],
                bias,
            )
            lm.telemetry[PROMPTS] += 1
            lm.telemetry["hcm.prompts_with_unpruned_levels"] += per == 0 and len(ids) > s["max_chunk_len"]
            lm.telemetry["hcm.kept_tokens"] += len(pos)
            lm.telemetry[PRUNED] += len(ids) - len(pos)
            from transformers import DynamicCache

            cache = DynamicCache()
            for i, (k, v) in enumerate(kv):
                cache.update(k, v, i)
            return cache, int(pos[-1]), logits

        def step(token: int, cache, position: int):
            out = lm.model(
                input_ids=torch.tensor([[token]], device=lm.device),
                past_key_values=cache,
                position_ids=torch.tensor([[position]], device=lm.device),
                use_cache=True,
            )
            return out.logits[0, -1]

        def generate_batch(ids, mask, max_new_tokens, temperature, top_p):
            lm.telemetry[CALLS] += 1
            eos, pad = lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id
            rows = []
            for row, m in zip(ids.tolist(), mask.tolist()):
                prompt = [t for t, keep in zip(row, m) if keep]
                cache, last, logits = (
                    prefill(prompt) if len(prompt) > s["max_chunk_len"] else _plain_prefill(lm, prompt)
                )
                new = []
                for i in range(max_new_tokens):
                    token = _pick(logits, temperature, top_p)
                    new.append(token)
                    if token == eos or i == max_new_tokens - 1:
                        break
                    logits = step(token, cache, last + 1 + i)
                rows.append(new)
            width = max(map(len, rows))
            fill = eos if eos is not None else pad
            return torch.tensor([r + [fill] * (width - len(r)) for r in rows], device=lm.device)

        def forward_logits(ids, mask):
            lm.telemetry[CALLS] += 1
            out = torch.zeros(*ids.shape, lm.model.config.vocab_size, device=lm.device)
            for b, (row, m) in enumerate(zip(ids.tolist(), mask.tolist())):
                seq = [t for t, keep in zip(row, m) if keep]
                out[b, : len(seq)] = self._score(lm, seq, s, prefill)
            return out

        with lm.batch_hooks(generate_batch=generate_batch, forward_logits=forward_logits):
            yield

    @torch.no_grad()
    def _score(self, lm, seq: list[int], s: dict, prefill) -> torch.Tensor:
        """Logits at every position: the first L tokens plainly, then parts of L/2 tokens on the
        merged cache of everything before (official perplexity protocol)."""
        L = s["original"]
        first = lm.model(input_ids=torch.tensor([seq[:L]], device=lm.device)).logits[0]
        parts, part = [first], max(1, L // 2)
        for end in range(L, len(seq), part):
            cache, last, _ = prefill(seq[:end])
            tokens = torch.tensor([seq[end : end + part]], device=lm.device)
            positions = last + 1 + torch.arange(tokens.shape[1], device=lm.device)[None]
            parts.append(
                lm.model(input_ids=tokens, past_key_values=cache, position_ids=positions, use_cache=True).logits[0]
            )
        return torch.cat(parts)

    def check_effect(self, lm, ctx, result) -> str | None:
        if not lm.telemetry[CALLS]:
            return "the method's generation and scoring hooks were never called"
        L = self.sizes(lm)["original"]
        if (ctx.target_length or 0) > L and not lm.telemetry[PRUNED]:
            return f"inputs beyond the original {L} tokens were never reduced by the merge"
        return None


@torch.no_grad()
def _plain_prefill(lm, prompt):
    """A prompt within one chunk: HOMER's single leaf with nothing to prune is the plain model."""
    from transformers import DynamicCache

    lm.telemetry["hcm.plain_prompts"] += 1
    cache = DynamicCache()
    out = lm.model(input_ids=torch.tensor([prompt], device=lm.device), past_key_values=cache, use_cache=True)
    return cache, len(prompt) - 1, out.logits[0, -1]


def _pick(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cut = sorted_p.cumsum(0) - sorted_p >= top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p.masked_fill(cut, 0))
    return int(torch.multinomial(probs / probs.sum(), 1))
