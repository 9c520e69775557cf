"""The short long-context fine-tune that PI, YaRN and LongLoRA pair with their position scaling,
run as a `harness fit` stage; one loop for all three.

Data: the zoo's own training rows (harness/zoo/train.py `RowMaker`, the zoo recipe's mix of needle,
recall-drill, copy and passkey rows and its answer-weighted loss) at the fine-tuning length, from a
training-side seed, so the fit never sees evaluation text. Optimiser as in the three papers: AdamW
(β 0.9/0.95), no weight decay, 20 linear warm-up steps then a constant rate, gradient clipping
at 1. Deterministic given the seed (CPU: torch's deterministic algorithms; CUDA: as far as cuBLAS
allows with CUBLAS_WORKSPACE_CONFIG set).

Learning rate: the papers use 2e-5 on Llama-2, whose pre-training peak was 3e-4; the zoo models
were pre-trained at 2e-3, so the same ratio gives 2e-5 · 2e-3 / 3e-4 ≈ 1.3e-4 (this project's
scaling, since 2e-5 barely moves a 2.6M-parameter model in a CPU-sized number of steps).
Steps and rows per step default to 250 steps of one 2048-token row, which fit the issue's budget of
30 CPU minutes for zoo:tiny-llama: measured with one torch thread (`fit_cpu_seconds` in each
artifact), LongLoRA took 199 CPU-s, PI 206 and YaRN 232 (the papers: 1000 steps (PI, LongLoRA)
or 400 (YaRN) of 64 rows each, on GPUs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from harness.errors import UserError
from harness.zoo.train import Recipe, RowMaker, weighted_loss

FIT_TEXT_SEED = 77_000  # training-side corpus seed (< EVAL_SEED_BASE): never evaluation text
WEIGHTS_FILE = "weights.safetensors"
SWAPS = "patched_calls.finetuned_weights"  # telemetry: forwards run with the fine-tuned weights


@dataclass
class FinetuneFields:
    """The fine-tuning parameters every fitted long-context method shares."""

    ranges = {
        "fit_length": "[1, inf)",
        "lr": "(0, inf)",
        "rows_per_step": "[1, inf)",
        "steps": "[1, inf)",
        "warmup": "[0, inf)",
    }  # checked by params.build before any model loads
    fit_length: int = field(default=2048, metadata={"help": "tokens per training row (the target context)"})
    steps: int = field(default=250, metadata={"help": "optimiser steps"})
    rows_per_step: int = field(default=1, metadata={"help": "training rows per step"})
    lr: float = field(default=1.3e-4, metadata={"help": "peak learning rate (papers' 2e-5, rescaled)"})
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps"})

    def check_fit_fields(self):
        if min(self.fit_length, self.steps, self.rows_per_step) < 1 or self.warmup < 0 or self.lr <= 0:
            raise ValueError("fit_length, steps, rows_per_step and lr must be positive, warmup >= 0")

    def finetune_params(self) -> dict:
        return {
            "fit_length": self.fit_length,
            "steps": self.steps,
            "rows_per_step": self.rows_per_step,
            "lr": self.lr,
            "warmup": self.warmup,
        }

    def finetune_data_hash(self, lm, ctx) -> str:
        """The rows are a pure function of the recipe, seed, length and tokenizer: hash those."""
        vocab = sorted(lm.tokenizer.get_vocab().items())
        desc = {
            "rows": "harness.zoo.train.RowMaker",
            "recipe": asdict(Recipe()),
            "seed": FIT_TEXT_SEED + ctx.seed,
            "length": self.fit_length,
            "n_rows": self.steps * self.rows_per_step,
            "tokenizer": hashlib.sha256(json.dumps(vocab).encode()).hexdigest(),
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def train(lm, ctx, cfg: FinetuneFields, trainable: dict[str, torch.Tensor], patches, log=print):
    """Fine-tune the `trainable` tensors (model parameters by name, or extra tensors such as LoRA
    factors; everything else frozen) inside the context managers `patches()` yields (the RoPE
    scaling and, for LongLoRA, its training attention and LoRA). Returns (loss log, trained
    tensors by name); the model's own parameters are restored afterwards."""
    model, device = lm.model, lm.device
    own = dict(model.named_parameters())
    original = {n: own[n].detach().clone() for n in trainable if n in own}
    params = list(trainable.values())
    torch.manual_seed(ctx.seed)
    if str(device).startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old_det = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=str(device) != "cpu")
    torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling costs ~40 % of a step (zoo notes)
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    maker, recipe = RowMaker(lm.tokenizer, FIT_TEXT_SEED + ctx.seed), Recipe()
    history, recent, t0 = [], [], time.perf_counter()
    model.train()
    try:
        with contextlib.ExitStack() as stack:
            for p in patches():
                stack.enter_context(p)
            for step in range(cfg.steps):
                ids, amask = maker.batch(cfg.fit_length, cfg.rows_per_step, recipe)
                if ids.shape[1] != cfg.fit_length:
                    raise UserError(f"fit_length {cfg.fit_length} is too short for a training row")
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
                loss, _, _ = weighted_loss(model, ids.to(device), amask.to(device), recipe.lm_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                recent.append(loss.item())
                if step % 10 == 0 or step == cfg.steps - 1:  # mean over the steps since the last entry
                    entry = {
                        "step": step,
                        "loss": round(sum(recent) / len(recent), 4),
                        "elapsed_s": round(time.perf_counter() - t0, 1),
                    }
                    recent = []
                    history.append(entry)
                    log(f"fine-tune step {step + 1}/{cfg.steps}: loss {entry['loss']:.4f} ({entry['elapsed_s']:.0f} s)")
        trained = {n: t.detach().clone() for n, t in trainable.items()}
    finally:
        model.eval()
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        torch.use_deterministic_algorithms(old_det)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill
        with torch.no_grad():
            for n, value in original.items():
                own[n].copy_(value)
    return history, trained


def writer(tensors: dict[str, torch.Tensor]):
    """write_files callable for harness.artifacts.save: the tensors as one safetensors file."""
    from safetensors.torch import save_file

    def write(folder):
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))

    return write


def read(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / WEIGHTS_FILE))


@contextlib.contextmanager
def swapped_weights(lm, tensors: dict[str, torch.Tensor]):
    """Copy `tensors` (parameter name -> value) into lm.model for the block, restore after; every
    forward in the block counts as one use of the fine-tuned weights (the effect check)."""
    params = dict(lm.model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise UserError(f"the fitted weights do not fit this model (no parameter {missing[0]!r})")
    saved = {}
    with torch.no_grad():
        for name, value in tensors.items():
            saved[name] = params[name].detach().clone()
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    hook = lm.model.register_forward_pre_hook(lambda *_: lm.telemetry.update({SWAPS: 1}))
    try:
        yield
    finally:
        hook.remove()
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


class FinetunedRope(FinetuneFields):
    """Mixin for a RoPE method plus the fine-tune its paper pairs it with. The scale is fixed by
    `fit_length` (the fine-tuned weights expect that scale at every evaluation length), the fit
    stage trains, the artifact holds the trained tensors, evaluation swaps them in. Subclasses
    change what trains (`training_setup`) and what is swapped in (`eval_weights`)."""

    fit_version = "1"

    def __post_init__(self):
        self.check_fit_fields()
        self._trained: dict[str, torch.Tensor] | None = None

    def resolve(self, lm, ctx):
        from harness.interfaces import MethodContext

        return super().resolve(lm, MethodContext(target_length=self.fit_length, seed=ctx.seed))

    def resolved(self, lm, ctx) -> dict:
        return dict(super().resolved(lm, ctx), fit_length=self.fit_length)

    def needs_fit(self, lm, ctx) -> bool:
        return True

    def fit_params(self, lm, ctx) -> dict:
        from harness import params

        shape, s = self.resolve(lm, ctx)
        return {"scale": s, "original": shape.original_max, "params": params.to_dict(self)}

    def fit_data_hash(self, lm, ctx) -> str:
        return self.finetune_data_hash(lm, ctx)

    def training_setup(self, lm, ctx, shape, s):
        """(trainable tensors by name, callable -> the context managers training runs in).
        Default: the whole model, under the method's RoPE scaling (the PI and YaRN papers)."""
        from harness.methods.rope._common import rope_override

        return dict(lm.model.named_parameters()), lambda: [rope_override(lm.model, self.freq_fn(shape, s))]

    def eval_weights(self, lm) -> dict[str, torch.Tensor]:
        return self._trained

    def fit(self, lm, ctx, log=print):
        shape, s = self.resolve(lm, ctx)
        if s <= 1:
            raise UserError(
                f"{self.name}: fit_length {self.fit_length} is not beyond the model's original "
                f"{shape.original_max} tokens, so there is nothing to extend"
            )
        trainable, patches = self.training_setup(lm, ctx, shape, s)
        history, trained = train(lm, ctx, self, trainable, patches, log)
        seconds = history[-1]["elapsed_s"] if history else 0.0
        return (
            {
                "scale": s,
                "fit_length": self.fit_length,
                "loss_first": history[0]["loss"],
                "loss_last": history[-1]["loss"],
                "loss_history": history,
                "seconds_per_step": round(seconds / self.steps, 3),
                "trained_tensors": len(trained),
            },
            writer(trained),
        )

    def use_artifact(self, payload, folder) -> None:
        self._trained = read(folder)

    @contextlib.contextmanager
    def apply(self, lm, ctx):
        if self._trained is None:
            raise UserError(f"method {self.name} needs its fit stage (harness fit --method {self.name})")
        with swapped_weights(lm, self.eval_weights(lm)), super().apply(lm, ctx):
            yield

    def check_effect(self, lm, ctx, result) -> str | None:
        reason = super().check_effect(lm, ctx, result)
        if reason is None and not lm.telemetry[SWAPS]:
            return "the model never ran with the fine-tuned weights"
        return reason
