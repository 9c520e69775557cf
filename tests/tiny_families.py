"""Tiny random checkpoints of real model families (AutoConfig -> from_config -> save_pretrained, with
the zoo tokenizer): what the architecture tests and the generated architectures table load."""

from __future__ import annotations

import torch

# family -> config fields beyond the shared tiny sizes (each family's own names where they differ)
FAMILIES = {
    "llama": {},
    "qwen2": {},
    "mistral": {"sliding_window": None},  # Mistral >= v0.2: full attention
    "mistral-sw": {"sliding_window": 64},  # Mistral 7B v0.1 style sliding window
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 64},
    "gemma3_text": {"head_dim": 16, "sliding_window": 64},
    "cohere": {},
    "phi3": {},
    "gpt_neox": {"rotary_pct": 0.25},
    "phi": {"partial_rotary_factor": 0.5},
    "phi-qknorm": {"partial_rotary_factor": 0.5, "qk_layernorm": True},  # per-head LayerNorms
    "qwen3": {"head_dim": 32},  # per-head RMSNorm q_norm/k_norm; head_dim != hidden/heads
    "olmo2": {},  # q_norm/k_norm over the whole projection
    "persimmon": {"qk_layernorm": True, "partial_rotary_factor": 0.5},  # per-head query_key_value + norms
    "falcon": {"multi_query": True},  # one key/value head in query_key_value
    "falcon-gqa": {"new_decoder_architecture": True, "num_kv_heads": 2},  # Falcon-40B/180B layout
    "falcon-mha": {"multi_query": False},  # [heads, 3, head_dim] like GPT-NeoX
    "gpt2": {},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
}


def make_family(folder, family: str, max_pos: int = 128, seed: int = 0) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.zoo.tokenizer import build_tokenizer

    tok = build_tokenizer(1)  # pinned: random-init fixtures, their token ids must not move with the zoo generation
    model_type = family.split("-")[0]
    if model_type == "gpt2":
        sizes = dict(n_embd=64, n_layer=2, n_head=4, n_positions=max_pos, n_inner=128)
    elif model_type == "falcon":
        sizes = dict(
            hidden_size=64,
            ffn_hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_pos,
        )
    else:
        sizes = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2 if model_type not in ("gpt_neox", "phi", "persimmon") else 4,
            max_position_embeddings=max_pos,
        )
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **sizes,
        **FAMILIES[family],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
