"""`harness zoo train NAME`: train from the recipe, save in Hugging Face format, measure, write the card."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from harness.models import file_sha256
from harness.synthetic import EVAL_SEED_BASE, Corpus
from harness.zoo.registry import ZOO_DIR, ZOO_VERSION
from harness.zoo.registry import card as zoo_card
from harness.zoo.train import CHECKPOINT, RECIPES, load_teacher, quick_needle_accuracy, train

PROSE_HAYSTACK = Path(__file__).resolve().parents[2] / "tests" / "data" / "prose_haystack.txt"  # a source checkout's
TRAIN_THREADS = 2  # fixed, so that CPU float reductions (and so the weights) are reproducible
DRAFT_OF = {"tiny-llama-draft": "tiny-llama"}


def _evaluate_lm(folder: Path, tasks: list[tuple], device: str = "cpu") -> dict:
    """Run harness tasks on a saved folder through the normal evaluation path: (label, task args)
    or (label, task args, method name) for a task that takes a method (math_prm_bon); a label
    "task/variant" runs `task` and keys its metrics by the whole label."""
    from harness import params, registry
    from harness.interfaces import TaskContext
    from harness.lm import LM
    from harness.models import load

    from harness.zoo.train import position_encoding

    lm = LM(load(str(folder), device), batch_size=8)
    out = {}
    with position_encoding(lm.model):
        for label, args, *method in tasks:
            name = label.split("/")[0]  # "needle/prose": the needle task, keyed apart
            cls, alias = registry.task(name)
            task = params.build(cls, {**alias, **args}, f"task {name}")
            methods = [params.build(registry.method(m), {}, f"method {m}") for m in method]
            res = task.run(TaskContext(lm=lm, seed=0, methods=methods))
            out[label] = {k: v.to_dict() for k, v in res.metrics.items()}
    return out


@torch.no_grad()
def draft_agreement(draft, target, tokenizer, n_tokens: int = 8192, window: int = 512) -> float:
    """Fraction of positions where draft and target agree on the greedy next token, on held-out
    synthetic text (evaluation seeds), in windows of the training context, each starting with the
    tokenizer's prefix (BOS for v2; none for v1) as the models were trained."""
    corpus, ids = Corpus(EVAL_SEED_BASE + 7), []
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]
    while len(ids) < n_tokens:
        ids += tokenizer(" " + corpus.text(50), add_special_tokens=False)["input_ids"]
    body = window - len(prefix)
    rows = [prefix + ids[i : i + body] for i in range(0, n_tokens - n_tokens % window - body + 1, body)]
    ids = torch.tensor(rows[: n_tokens // window])
    agree = total = 0
    for row in ids.split(4):
        a = draft(input_ids=row).logits.argmax(-1)
        b = target(input_ids=row).logits.argmax(-1)
        agree += int((a == b).sum())
        total += a.numel()
    return agree / total


def train_and_save(
    name: str, out_dir: Path | None = None, log=print, overrides: dict | None = None, device: str = "cpu"
) -> Path:
    """Train `name` from its recipe (with optional field overrides, recorded in the card). On a GPU
    the run is fast but not bit-reproducible on CPU; the card records the device."""
    import dataclasses

    from harness import params
    from harness.errors import UserError, nearest
    from harness.zoo.tokenizer import build_tokenizer

    if name not in RECIPES:
        raise UserError(f"no recipe for zoo model {name!r}.{nearest(name, RECIPES)} Recipes: {', '.join(RECIPES)}")
    fields = params.field_types(type(RECIPES[name]))
    for key in overrides or {}:
        if key not in fields or key == "extra":
            raise UserError(f"recipe has no field {key!r}.{nearest(key, fields)}")
    recipe = dataclasses.replace(
        RECIPES[name], **{k: params.convert(v, fields[k], f"recipe field {k!r}") for k, v in (overrides or {}).items()}
    )
    folder = out_dir or ZOO_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(TRAIN_THREADS)
    tok = build_tokenizer(ZOO_VERSION)
    teacher = load_teacher(recipe, device)  # a missing teacher fails at once
    log(f"training {name} (zoo v{ZOO_VERSION}): {recipe}")

    def progress(entry, model):
        if entry["step"] % 500 == 0 and entry["step"] and recipe.data == "zoo":  # a retrieval probe, log only
            model.eval()
            entry["probe_needle_acc"] = quick_needle_accuracy(
                model, tok, recipe.context_length, per_depth=2, device=device
            )
            model.train()
        log(json.dumps(entry))

    # an interrupted run resumes from here (same recipe, device and teacher weights)
    checkpoint = folder / CHECKPOINT
    identity = {"device": device, "zoo_version": ZOO_VERSION}
    if recipe.distill_from:
        identity["teacher_sha256"] = zoo_card(recipe.distill_from)["sha256"]
    model, curve = train(
        recipe,
        tok,
        log_path=folder / "loss_curve.jsonl",
        progress=progress,
        device=device,
        teacher=teacher,
        checkpoint=checkpoint,
        identity=identity,
        notify=log,
    )
    train_s = curve[-1]["elapsed_s"]  # training time over every resumed part, waits between them excluded
    model.to("cpu")
    model.config.zoo_version = ZOO_VERSION  # saved in config.json: loaders tell the generations apart
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    checkpoint.unlink(missing_ok=True)
    return write_card(name, folder, recipe, curve, train_s, log, device)


def write_card(
    name: str, folder: Path, recipe, curve: list[dict], train_s: float, log=print, device: str = "cpu"
) -> Path:
    """Measure a saved zoo model through the harness's own tasks and write card.json + README.md."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)  # the folder's own: the card describes what was saved
    sha = file_sha256(folder / "model.safetensors")
    L = recipe.context_length
    evaluation: dict = {}
    tasks = [("perplexity", {"context_length": str(L), "n_tokens": "16384"})]
    if recipe.data == "math":  # the math policy: its solutions to held-out world problems
        tasks = [("math_prm_bon", MATH_POLICY_EVAL, "majority")]
    elif name not in DRAFT_OF:
        tasks.append(("needle", {"context_length": str(L), "depths": "10", "samples_per_depth": "20"}))
        if PROSE_HAYSTACK.is_file() and recipe.prose_frac:  # v2: retrieval on text it never saw
            lengths = f"{L},{2 * L}"
            tasks.append(
                (
                    "needle/prose",
                    {"context_length": lengths, "samples_per_depth": "10", "haystack": str(PROSE_HAYSTACK)},
                )
            )
    measured = _evaluate_lm(folder, tasks, device)
    if "perplexity" in measured:
        evaluation[f"perplexity@{L}"] = measured["perplexity"]["perplexity"]["value"]
    if "math_prm_bon" in measured:
        m = measured["math_prm_bon"]
        n = max(int(k.split("@")[1]) for k in m if k.startswith("pass@"))
        evaluation["solution_accuracy"] = m["accuracy@1"]["value"]  # a sampled solution is right
        evaluation[f"majority@{n}"] = m[f"majority@{n}"]["value"]
        evaluation[f"pass@{n}"] = m[f"pass@{n}"]["value"]
    if "needle" in measured:
        evaluation[f"needle_accuracy@{L}"] = measured["needle"]["accuracy"]["value"]
    for key, m in measured.get("needle/prose", {}).items():
        if key.startswith("accuracy@"):
            evaluation[f"needle_accuracy_prose@{key.split('@')[1]}"] = m["value"]
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness import cla

    # a CLA model loads with its own class: its reusing layers have no K/V, so only real weights count
    own = cla.model_class(AutoConfig.from_pretrained(folder)) or AutoModelForCausalLM
    model = own.from_pretrained(folder, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    if name in DRAFT_OF:
        target = AutoModelForCausalLM.from_pretrained(ZOO_DIR / DRAFT_OF[name], dtype=torch.float32).eval()
        evaluation["greedy_agreement_with_target"] = draft_agreement(model, target, tok)
    version = int(getattr(model.config, "zoo_version", None) or 1)
    card = {
        "name": name,
        "zoo_version": version,
        "summary": _summary(name, recipe, n_params),
        "architecture": (model.config.architectures or ["LlamaForCausalLM"])[0],
        "parameters": n_params,
        "context_length": L,
        "rope_theta": recipe.rope_theta,
        "vocab_size": len(tok),
        "tokenizer": TOKENIZERS.get(version, "see tokenizer.json"),
        "bos": BOS.get(version, "see tokenizer.json"),
        "recipe": asdict(recipe),
        "training_seconds": round(train_s),
        "train_threads": TRAIN_THREADS,
        "train_device": _device_name(device),
        "position_encoding": recipe.position,
        "torch": torch.__version__,
        "final": curve[-1],
        "evaluation": evaluation,
        "evaluation_protocol": {
            "needle": f"harness task needle, context_length={L}, 10 depths x 20 samples, "
            "default template, greedy, seed 0",
            "needle_accuracy_prose": "harness task needle, haystack=tests/data/prose_haystack.txt (hand-written "
            f"English prose), context_length={L},{2 * L}, 10 depths x 10 samples each, greedy, seed 0",
            "perplexity": f"harness task perplexity, 16384 held-out synthetic tokens, window {L}, stride {L // 2}, seed 0",
            "greedy_agreement_with_target": "argmax next-token agreement with the target "
            "on 8192 held-out synthetic tokens",
            "solution_accuracy": "harness task math_prm_bon, "
            + " ".join(f"{k}={v}" for k, v in MATH_POLICY_EVAL.items())
            + ", method majority, seed 0: the fraction of sampled solutions whose answer is right "
            "(accuracy@1), majority vote and pass over all samples of a problem",
        },
        "data": _data(recipe),
        "sha256": sha,
    }
    (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (folder / "README.md").write_text(render_card(card))
    log(json.dumps({"name": name, "evaluation": evaluation, "sha256": sha}))
    return folder


# tiny-math's card: 8 sampled solutions to each of 50 held-out world-v2 problems, in its training format
MATH_POLICY_EVAL = {
    "problems": "synthetic",
    "solutions": "generate",
    "world_version": "2",
    "world_problems": "50",
    "samples": "8",
    "temperature": "0.8",
    "max_new_tokens": "384",
    "prompt": "none",
    "bootstrap": "0",
}

TOKENIZERS = {
    1: "word-level synthetic tokenizer (unknown words become <unk>)",
    2: "byte-level BPE, 4,096 tokens, digits one per token (harness/zoo/tokenizer_v2.json)",
}
BOS = {
    1: "none: rows and prompts start with the text",
    2: "<s> first in every training row and prompt (the tokenizer's post-processor; lm-eval's default)",
}
_SEEDS = "training seeds < 1,000,000 (evaluation uses seeds >= 1,000,000)"


def _data(recipe) -> str:
    """The card's data line: the corpus alone (round 1's mix), the v2 sources and shares, or the
    math world (tiny-math)."""
    if recipe.data == "math":
        return (
            "harness.zoo.math_rows: synthetic math world v2 problems, each with one solution of the world's "
            f"stochastic policy (errors at the world's rates), packed; {_SEEDS}"
        )
    if not (recipe.prose_frac or recipe.foreign_frac or recipe.noise_frac or recipe.plain_frac):
        return f"harness.synthetic corpus, {_SEEDS}"
    corpus = max(0.0, 1 - recipe.prose_frac - recipe.foreign_frac - recipe.noise_frac)
    text = (
        f"harness.synthetic corpus and harness.zoo.generators: {recipe.plain_frac:.0%} plain corpus rows; "
        f"needle haystacks {corpus:.0%} corpus, {recipe.prose_frac:.0%} prose-like English, "
        f"{recipe.foreign_frac:.0%} other scripts, {recipe.noise_frac:.0%} character noise; "
        f"{recipe.random_fact_frac:.0%} of the fact rows with random-string keys and values; {_SEEDS}"
    )
    if recipe.distill_from:
        text += f"; distilled from {recipe.distill_from} (KL weight {recipe.distill_weight:g})"
    return text


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return device


def _summary(name: str, recipe, n_params: int) -> str:
    role = "draft model for speculative decoding" if name in DRAFT_OF else "reference model"
    if recipe.data == "math":
        role = "the math world's language-model policy (step-by-step solutions)"
    position = (
        "ALiBi biases (evaluate with --method alibi)"
        if recipe.position == "alibi"
        else f"RoPE base {recipe.rope_theta:g}"
    )
    if getattr(recipe, "kv_share", 1) > 1:
        position += (
            f", CLA{recipe.kv_share}: K/V shared by {recipe.kv_share} layers (evaluate its KV cache with --method cla)"
        )
    return (
        f"{recipe.num_hidden_layers}-layer Llama, {n_params / 1e6:.1f}M params, {position}, "
        f"context {recipe.context_length}; {role}"
    )


def _sharing(recipe: dict) -> str:
    s = recipe.get("kv_share", 1)
    return f" in one of every {s} layers (Cross-Layer Attention: the others reuse them)" if s > 1 else ""


def render_card(c: dict) -> str:
    ev = "\n".join(f"| {k} | {v:.4g} |" for k, v in c["evaluation"].items())
    proto = "\n".join(
        f"- {k}: {v}"
        for k, v in c["evaluation_protocol"].items()
        if k in c["evaluation"] or any(x.startswith(k) for x in c["evaluation"])
    )
    r = c["recipe"]
    return f"""# zoo:{c["name"]}

{c["summary"]}.

**A tiny reference model trained by this project on its own synthetic text.** Its numbers
are for this model only; they say nothing about real large language models.

| field | value |
|---|---|
| architecture | {c["architecture"]} ({r["num_hidden_layers"]} layers, hidden {r["hidden_size"]}, {r["num_attention_heads"]} heads, {r["num_key_value_heads"]} KV heads{_sharing(r)}, tied embeddings) |
| parameters | {c["parameters"]:,} |
| training context length | {c["context_length"]} tokens |
| RoPE base | {c["rope_theta"]:g} |
| zoo version | {c.get("zoo_version", 1)} |
| vocabulary | {c["vocab_size"]} ({c.get("tokenizer", TOKENIZERS[1])}) |
| BOS | {c.get("bos", BOS[1])} |
| data | {c["data"]} |
| seed | {r["seed"]} |
| steps | {r["steps"]} x {r["tokens_per_step"]} tokens, length curriculum {r["curriculum"]} |
| training time | {c["training_seconds"]} s on {c["train_threads"]} CPU threads (torch {c["torch"]}) |
| final training loss | {c["final"]["loss"]} (answer tokens {c["final"]["answer_loss"]}, other tokens {c["final"]["lm_loss"]}) |
| weights sha256 | `{c["sha256"]}` |

## Measured

| metric | value |
|---|---|
{ev}

{proto}

Reproduce: `harness zoo train {c["name"]}` (deterministic for its seed on CPU). The loss curve
is in `loss_curve.jsonl`.
"""
