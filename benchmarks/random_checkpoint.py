"""A random-initialised checkpoint with a real model's shapes, for benchmarks on a GPU: the time and
memory of attention and KV-cache code depend on the shapes (heads, KV heads, head size, hidden and
MLP widths, vocabulary), not on trained weights. Built through transformers' own config and
`save_pretrained`, so the benchmarks load it with the harness's ordinary loading code.

    python benchmarks/random_checkpoint.py --out DIR [--shape llama-3-8b] [--layers N]
                                           [--dtype bfloat16] [--device cuda] [--set key=value ...]

--layers keeps every layer's shapes and runs fewer of them (a ratio of a method to the baseline
is per layer, apart from the embedding and the output head); the config records the choice.
The zoo tokenizer is saved beside the weights (benchmarks feed token ids; its 4,096 ids are all
inside the model's vocabulary)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# Llama-3-8B's config.json (meta-llama/Meta-Llama-3-8B): the shapes that set attention's cost
SHAPES = {
    "llama-3-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
}


def build(out: Path, shape: str, layers: int | None, dtype: str, device: str, overrides: dict) -> Path:
    import torch
    import transformers

    from harness.zoo import registry as zoo

    fields = dict(SHAPES[shape], **overrides)
    if layers:
        fields["num_hidden_layers"] = layers
    model_type = fields.pop("model_type")
    theta = fields.pop("rope_theta")
    config = transformers.AutoConfig.for_model(model_type, **fields)
    config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    changed = "".join(f", {k}={v}" for k, v in overrides.items())  # (the label says what was changed)
    config.benchmark_shape = f"{shape}, {config.num_hidden_layers} layers{changed}, random weights"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    folder, _ = zoo.verified_folder("tiny-llama")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / f, out / f)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {config.benchmark_shape}, {n / 1e9:.2f}B parameters in {dtype}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3-8b")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers of the same shapes")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu", help="where the weights are initialised (cuda is faster)")
    ap.add_argument("--set", action="append", default=[], help="config field override, key=value (int)")
    a = ap.parse_args()
    overrides = {k: int(v) for k, v in (s.split("=", 1) for s in a.set)}
    build(Path(a.out), a.shape, a.layers, a.dtype, a.device, overrides)


if __name__ == "__main__":
    main()
