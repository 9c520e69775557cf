"""lm-eval model `harness`: a harness model with harness methods applied, for lm-eval's own CLI.

    harness lm-eval --model harness --model_args model=zoo:tiny-llama,method=yarn,max_length=1024 \
            --tasks harness_needle_gen --include_path tests/lm_eval_tasks

model_args: model (zoo:<name>, hf:<id> or a folder; default zoo:tiny-llama), method (a method
or a `+` composition of `lm` methods; default baseline), max_length (the context the run targets:
RoPE methods derive their scale from it; truncation and rolling windows use it), max_gen_toks,
seed, fit_seed (the seed of the fit artifacts the methods load, as `harness eval --fit-seed`),
device, trust_remote_code, and any method parameter (`factor=4`, or `yarn.factor=4` to
target one method of a composition). `tokenizer`/`pretrained` are accepted and left to the tasks
that read them from metadata (RULER). Each method's effect check runs when lm-eval asks for the
model info after evaluating; a method that did nothing fails the run, as in `harness eval`.

lm-eval finds the name through the registration below, which `harness lm-eval` (__main__.py)
performs by importing this module before it runs lm-eval's CLI."""

from __future__ import annotations

import contextlib

from lm_eval.api.registry import register_model

from harness.errors import NoEffect, UserError
from harness.interfaces import MethodContext, TaskResult
from harness.tasks.lm_eval._adapter import HarnessAdapter

ADAPTER_ARGS = (
    "model",
    "method",
    "device",
    "batch_size",
    "max_batch_size",
    "max_length",
    "max_gen_toks",
    "seed",
    "fit_seed",
    "trust_remote_code",
    "tokenizer",
    "pretrained",
)


@register_model("harness")
class HarnessModel(HarnessAdapter):
    def __init__(
        self,
        model: str = "zoo:tiny-llama",
        method: str = "baseline",
        device: str | None = None,
        batch_size=8,
        max_batch_size=None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        seed: int = 0,
        fit_seed: int = 0,
        trust_remote_code: bool = False,
        tokenizer=None,
        pretrained=None,
        **method_args,
    ):
        from harness import fitting, models, params
        from harness.lm import LM

        self.fit_seed = params.check_seed(_int_arg(fit_seed, "fit_seed"), "model_args fit_seed")
        self.methods = build_methods(str(method), method_args)
        self.loaded = models.load(str(model), _device(device), bool(trust_remote_code))
        lm = LM(self.loaded, _batch_size(batch_size))
        super().__init__(lm, int(max_length) if max_length else None, int(max_gen_toks), int(seed))
        self.mctx = MethodContext(target_length=self._max_length, seed=int(seed))
        self._stack = contextlib.ExitStack()
        self.components = []
        for m in self.methods:  # entered for the model's lifetime: every lm-eval request sees them
            artifact = fitting.attach_artifact(m, lm, self.mctx, self.loaded.sha256, str(model), self.fit_seed)
            self.components.append(
                {"name": m.name, "params": _params(m), "artifact": artifact, "resolved": m.resolved(lm, self.mctx)}
            )
            self._stack.enter_context(m.apply(lm, self.mctx))

    def get_model_info(self) -> dict:
        """Called by lm-eval after evaluating: the methods' effect checks, then what ran."""
        from harness import models

        for m in self.methods:
            reason = m.check_effect(self.lm, self.mctx, TaskResult({}, []))
            if reason:
                raise NoEffect(f"method {m.name}: {reason}; the results would not reflect it")
        return {
            "harness_model": self.loaded.id,
            "harness_model_sha256": self.loaded.sha256,
            "harness_model_label": models.label(self.loaded),
            "harness_method": "+".join(m.name for m in self.methods),
            "harness_fit_seed": self.fit_seed,
            "harness_methods": self.components,
            "harness_telemetry": dict(self.lm.telemetry),
        }


def build_methods(method: str, args: dict) -> list:
    """`yarn+selfextend` and `k=v` method parameters -> method instances, validated as harness eval does."""
    from harness import runner

    strings = {k: _arg_string(v) for k, v in args.items()}
    return runner.build_methods(method, strings, hint=f"Model arguments: {', '.join(ADAPTER_ARGS)}")


def _arg_string(value) -> str:
    """lm-eval parses model_args into Python values; the harness's typed parameters take strings."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _int_arg(value, name: str) -> int:
    """A whole-number model_arg (lm-eval passes `fit_seed=1` as 1, a typo as text): UserError else."""
    try:
        return int(str(value))
    except ValueError:
        raise UserError(f"model_args {name} must be an integer, got {value!r}") from None


def _device(device) -> str:
    """lm-eval's CLI passes cuda:0 by default; like its hf model, fall back to the CPU without CUDA."""
    import torch

    if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        return "auto"
    return str(device)


def _batch_size(value) -> int:
    """lm-eval's CLI default is 1; `auto` (probing for memory) is not supported: 8, the harness default."""
    if isinstance(value, int) or str(value).isdigit():
        return max(1, int(value))
    return 8


def _params(method) -> dict:
    from harness import params

    return params.to_dict(method)
