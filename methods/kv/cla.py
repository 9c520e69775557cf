from __future__ import annotations

from dataclasses import dataclass, field

from harness.cla import CLA_CONFIG_FLAG, describe, kv_bytes_per_token, kv_sharing, producing_layers
from harness.errors import Refused
from harness.registry import register
from harness.methods.kv._cache import REFERENCE_BYTES
from harness.methods.kv._common import KVMethod
from harness.methods.kv._driver import SHARED, kv_loop


@register
@dataclass
class CLA(KVMethod):
    """CLA — Brandon et al. 2024, "Reducing Transformer Key-Value Cache Size with Cross-Layer
    Attention" (NeurIPS 2024, arXiv:2405.12981). No official code; the rule is the paper's.

    Consecutive layers form groups of s (the sharing factor; CLA2 = pairs, the paper's best). Only a
    group's first layer has W_K/W_V and writes the KV cache; the others keep their own W_Q/W_O and
    attend to its post-RoPE keys and values (nothing is tied: they have no K/V projections).
    KV bytes/token = 2·n_kv·d_head·(n_layers/s)·bytes. A pretraining-time architecture: it applies
    only to a model trained with it (config `harness_kv_sharing` = s, the layout of harness/cla.py,
    e.g. zoo:tiny-llama-cla, trained with the tiny-llama recipe and budget at s = 2:
    `harness zoo train tiny-llama-cla`); a plain model is refused (deleting K/V projections from
    a pretrained model is not the paper's setting).

    The method runs the model's own layout through the kv engine (one prompt at a time): producing
    layers append to the cache, reusing layers read their producer's entry and append nothing, so
    the counted bytes (fp16, as for every kv method) are the producing layers' alone. Nothing is
    evicted: its budget is the model's dense cache (budget unit "model": kv_compression runs the
    dense row only, and reports kv_bytes_per_token and nll, which compare across models). The
    paper's comparison at equal KV memory is then between records: zoo:tiny-llama-cla with cla
    against zoo:tiny-llama with kivi / gear (and the dense cache), on the same task arguments, e.g.

        harness eval --task kv_compression --model zoo:tiny-llama-cla --method cla \\
            --task-arg context_length=512 --task-arg timing_lengths=512
        harness eval --task kv_compression --model zoo:tiny-llama --method kivi \\
            --method-arg k_bits=8 --method-arg v_bits=8 (same task args; also kivi and gear defaults)

    compared on kv_bytes_per_token against needle_accuracy and nll (CLA2 holds half of the base
    model's dense bytes; KIVI at 8 bits about as many, at 2 bits a fifth). The record's resolved
    parameters give s, the producing layers and the formula's bytes per token; the effect check
    asserts that the counted bytes equal the formula. `budget` must stay 1 (every token is kept)."""

    name = "cla"
    paper = "Reducing Transformer Key-Value Cache Size with Cross-Layer Attention (arXiv:2405.12981)"
    compresses = "none"
    budget_unit = "model"
    smoke_args = {}
    smoke_model_config = {CLA_CONFIG_FLAG: 2}
    ranges = {"budget": "[1, 1]"}
    budget: float = field(default=1.0, metadata={"help": "1: CLA keeps every token (its saving is the shared KV)"})

    def __post_init__(self):
        super().__post_init__()
        if self.budget != 1.0:
            raise ValueError("cla keeps every token: budget must be 1 (its saving is the model's shared KV)")

    def apply(self, lm, ctx):
        if kv_sharing(lm.model.config) < 2:
            raise Refused(
                f"method cla needs a model pretrained with Cross-Layer Attention (config {CLA_CONFIG_FLAG} >= 2, "
                f"e.g. zoo:tiny-llama-cla); {lm.loaded.id} has K/V projections in every layer"
            )
        return kv_loop(lm, self)

    def resolved(self, lm, ctx) -> dict:
        cfg = lm.model.config
        return {
            "sharing": kv_sharing(cfg),
            "layout": describe(cfg),
            "producing_layers": producing_layers(cfg),
            "kv_bytes_per_token": kv_bytes_per_token(cfg, REFERENCE_BYTES),
        }

    def check_effect(self, lm, ctx, result) -> str | None:
        t = lm.telemetry
        if not t["kv.calls"]:
            return "no prompt went through the KV cache"
        if not t[SHARED]:
            return "no reusing layer read its producer's cache"
        want = kv_bytes_per_token(lm.model.config, REFERENCE_BYTES)
        got = t["kv.bytes"] / t["kv.context_tokens"]
        if abs(got - want) > 1e-9 * want:
            return f"the cache held {got:g} bytes per token, not 2·n_kv·d_head·(producing layers)·2 = {want:g}"
        return None
