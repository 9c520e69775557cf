"""`kvpress:<PressName>`: every press of NVIDIA's kvpress as a kv method (optional extra `kvpress`).

The press runs as kvpress's own pipeline does: its forward hooks compress the context at prefill
inside transformers' DynamicCache, then the question and the answer are fed against that cache with
positions continuing from the original context length (kvpress `pipeline.py`). The harness's
budget is kvpress's `compression_ratio = 1 − budget` for presses that have one; presses without a
ratio run at their own settings ("native"). The ratio is chosen so that kvpress's own arithmetic
(int(n·(1 − ratio)) kept) keeps exactly the requested count (`press_ratio`). Telemetry matches the kv engine's, so the
kv_compression task scores a press exactly as it scores the native methods."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from harness.errors import UserError, nearest
from harness.registry import register_family
from harness.methods.kv._cache import REFERENCE_BYTES
from harness.methods.kv._common import KVMethod
from harness.methods.kv._driver import Driver, input_ids, kv_loop
from harness.methods.kv._eviction import kept_target

INSTALL = (
    'kvpress is not installed: `pip install "harness-eval[kvpress]"` (kvpress 0.5.5; it installs '
    "beside torch 2.14 and transformers 5.2, see the README)"
)


def _kvpress():
    try:
        import kvpress
    except ImportError:
        raise UserError(INSTALL) from None
    return kvpress


def press_ratio(n: int, kept: int) -> float:
    """The compression ratio under which kvpress keeps exactly `kept` of `n` tokens.

    kvpress truncates: a scorer press keeps int(n·(1 − ratio)) (`kvpress.utils.compute_n_kept`), and
    1 − kept/n in floating point often lands a hair below the integer, so the press kept one token
    fewer. This steps the ratio down from (n − kept)/n, one float at a time, until truncation gives
    `kept` (presses that round, or that prune int(n·ratio), can still differ by one)."""
    if kept >= n:
        return 0.0
    r = (n - kept) / n
    while int(n * (1 - r)) < kept:
        r = math.nextafter(r, 0.0)
    return r


class PressRun:
    """One prompt through transformers' DynamicCache with the press compressing its prefill."""

    def __init__(self, budget: float):
        from transformers import DynamicCache

        self.cache, self.budget, self.dense = DynamicCache(), budget, budget == 1.0
        self.n_context = self.next_pos = self.step = self.max_new = self.protect = 0
        self.phase, self.policy_s = "prefill", 0.0

    def _layers(self):
        return list(self.cache.layers)

    def kept_tokens(self) -> float:
        return sum(layer.keys.shape[2] for layer in self._layers()) / max(1, len(self._layers()))

    def bytes(self) -> float:
        return sum(
            2 * layer.keys.shape[1] * layer.keys.shape[2] * layer.keys.shape[3] * REFERENCE_BYTES
            for layer in self._layers()
        )

    def dense_bytes(self) -> float:
        return sum(
            2 * layer.keys.shape[1] * self.next_pos * layer.keys.shape[3] * REFERENCE_BYTES for layer in self._layers()
        )

    def held_bytes(self) -> int:
        return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in self._layers())


class PressDriver(Driver):
    def __init__(self, lm, method: "KVPressMethod"):
        super().__init__(lm, method)
        self.press = method.make_press()

    def start(self) -> PressRun:
        return PressRun(float(self.budget()))

    def _step(self, run: PressRun, ids: list[int] | torch.Tensor, all_logits: bool) -> torch.Tensor:
        dev = self.lm.device
        pos = torch.arange(run.next_pos, run.next_pos + len(ids), device=dev)
        out = self.lm.model(
            input_ids=input_ids(ids, dev),
            past_key_values=run.cache,
            use_cache=True,
            position_ids=pos[None],
            logits_to_keep=0 if all_logits else 1,
        )
        run.next_pos += len(ids)
        return out.logits[0]

    def prefill_forward(self, run: PressRun, ids: list[int], all_logits: bool):
        if hasattr(self.press, "compression_ratio"):
            n = len(ids)
            self.press.compression_ratio = 0.0 if run.dense else press_ratio(n, kept_target(run.budget, n))
        ctx = contextlib.nullcontext() if run.dense else self.press(self.lm.model)
        with ctx:
            logits = self._step(run, ids, all_logits)
        return logits, run.held_bytes()

    def decode_forward(self, run: PressRun, ids: list[int] | torch.Tensor) -> torch.Tensor:
        return self._step(run, ids, True)


@dataclass
class KVPressMethod(KVMethod):
    """A kvpress press (built by the `kvpress:` family)."""

    press_name: ClassVar[str] = ""
    engine: ClassVar[bool] = False  # the model's own attention runs (kvpress hooks it): no engine refusal
    budget: float = field(default=0.5, metadata={"help": "kept fraction; the press's compression_ratio = 1 - budget"})
    press_args: str = field(default="{}", metadata={"help": "JSON object of the press's own arguments"})

    def make_press(self):
        kvpress = _kvpress()
        try:
            kwargs = json.loads(self.press_args)
        except json.JSONDecodeError as e:
            raise UserError(f"kvpress:{self.press_name}: press_args is not JSON ({e})") from None
        try:
            return getattr(kvpress, self.press_name)(**kwargs)
        except TypeError as e:
            raise UserError(f"kvpress:{self.press_name}: {e}") from None

    def apply(self, lm, ctx):
        return kv_loop(lm, self, PressDriver(lm, self))


def build(press: str) -> type:
    kvpress = _kvpress()
    names = sorted(n for n in dir(kvpress) if n.endswith("Press") and n not in ("BasePress", "ScorerPress"))
    if press not in names:
        raise UserError(f"kvpress has no press {press!r}.{nearest(press, names)} Presses: {', '.join(names)}")
    cls = getattr(kvpress, press)
    has_ratio = dataclasses.is_dataclass(cls) and any(f.name == "compression_ratio" for f in dataclasses.fields(cls))
    doc = (cls.__doc__ or "").strip().split("\n")[0]
    ns = {
        "__doc__": f"kvpress {press} (NVIDIA/kvpress {kvpress.__version__ if hasattr(kvpress, '__version__') else ''}): {doc}",
        "__annotations__": {},
        "name": f"kvpress_{press.lower()}",
        "press_name": press,
        "paper": f"kvpress {press} (NVIDIA/kvpress)",
        "compresses": "prefill",
        "budget_unit": "tokens" if has_ratio else "native",
    }
    return dataclass(type(f"KVPress_{press}", (KVPressMethod,), ns))


register_family(
    "kvpress",
    "method",
    build,
    "any press of NVIDIA's kvpress, e.g. kvpress:SnapKVPress (optional extra: pip install 'harness-eval[kvpress]')",
    kind="lm",
)
