"""LOOK-M's mechanism on a tiny random-initialised LLaVA (issue 27; mechanism only: random weights,
no pixels). On a prompt shaped like LLaVA-1.5's (text, one image's 576 image tokens, a question), it
reports the share of the kept KV slots that are image tokens, for look_m and for two evictions that
do not know which tokens are image tokens (h2o, snapkv), at the same budgets. It also reports how
many evicted tokens look_m merged into kept ones. LOOK-M's text prior should keep no image token
while text outside the recent window remains; the others keep image tokens by attention score alone.
Numbers on random weights say nothing of quality; a real checkpoint's are
`harness eval --task kv_compression --method look_m --model PATH --task-arg image_tokens=576`.

    python benchmarks/look_m_mechanism.py [--json benchmarks/results/look_m_tiny_llava.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

IMAGE_TOKENS = 576  # LLaVA-1.5: one 336-px image through CLIP ViT-L/14 (24 x 24 patches)
BUDGETS = (0.1, 0.2, 0.3, 0.5)
METHODS = ("look_m", "h2o", "snapkv")
PROSE = Path(__file__).resolve().parents[1] / "tests" / "data" / "prose_haystack.txt"


def build_tiny_llava(out: Path) -> Path:
    """A random-initialised LLaVA (a CLIP vision tower, a 2-layer Llama with the zoo v2 tokenizer
    plus "<image>"), saved as a checkpoint folder; seed 0."""
    import torch
    from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from harness.zoo import registry as zoo

    folder, _ = zoo.verified_folder("tiny-llama")
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"), image_seq_length=16
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def prompt(lm) -> list[int]:
    words = PROSE.read_text().split()
    before, question = " ".join(words[:20]), " ".join(words[20:140])  # a system prompt, then a long question
    return lm.prompt_prefix() + lm.encode(before) + [lm.image_token_id] * IMAGE_TOKENS + lm.encode(question)


def kept(lm, name: str, ids: list[int], budget: float) -> dict:
    """Prefill ids through the kv engine under `name` at `budget`: the share of kept slots (over
    layers and KV heads) that are image tokens, and look_m's merge count."""
    from harness import params, registry
    from harness.interfaces import MethodContext
    from harness.lm import KVRequest

    m = params.build(registry.method(name), {"budget": str(budget)}, name)
    with m.apply(lm, MethodContext()) as driver:
        lm.kv_request = KVRequest(budget=budget)
        run = driver.start()
        driver.prefill(run, ids, all_logits=False)
        lm.kv_request = KVRequest()
    image = slots = 0
    for lc in run.layers.values():
        for head in lc.pos[0].tolist():
            slots += len(head)
            image += sum(ids[p] == lm.image_token_id for p in head)
    out = {"kept_fraction": slots / (len(ids) * sum(lc.pos.shape[1] for lc in run.layers.values()))}
    out["image_share_of_kept"] = image / slots
    if name == "look_m":
        out["merged"] = m._merged
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the measurements here")
    a = ap.parse_args()
    import torch
    import transformers

    from harness import registry
    from harness.lm import LM
    from harness.models import load

    registry.load()
    with tempfile.TemporaryDirectory() as tmp:
        lm = LM(load(str(build_tiny_llava(Path(tmp))), "cpu"))
        ids = prompt(lm)
        text = len(ids) - IMAGE_TOKENS
        rows = [dict(method=n, budget=b, **kept(lm, n, ids, b)) for n in METHODS for b in BUDGETS]
    print(f"prompt: {len(ids)} tokens ({IMAGE_TOKENS} image, {text} text); random weights: mechanism only\n")
    print("| method | budget | kept fraction | image share of kept slots | merged |\n|---|---|---|---|---|")
    for r in rows:
        merged = r.get("merged", "—")
        print(
            f"| {r['method']} | {r['budget']} | {r['kept_fraction']:.3f} | {r['image_share_of_kept']:.3f} | {merged} |"
        )
    if a.json:
        about = {
            "what": "LOOK-M mechanism on a tiny random LLaVA (benchmarks/look_m_mechanism.py): random weights, no pixels",
            "prompt_tokens": len(ids),
            "image_tokens": IMAGE_TOKENS,
            "text_tokens": text,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        }
        Path(a.json).write_text(json.dumps({"about": about, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
