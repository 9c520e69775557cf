"""How a Hugging Face checkpoint is loaded: dtype, device map, quantization, attention kernel, remote
code, whether the hub may be reached, and whether prompts go through its chat template. The options come from `harness eval` / `harness fit` flags
or a grid file's `loading:` mapping, are forwarded to transformers' `from_pretrained`, and are part
of the cell: the options that differ from their defaults enter the hashed config (so a bf16 run and a
float32 run are different cells, while records made before these options existed keep their run
ids), and the record keeps every option's effective value.

Downloads are off by default: an `hf:` id must already be in the local cache (`HF_HOME`), and every
`from_pretrained` call gets `local_files_only=True`, so a missing model fails at once instead of
retrying the network for a minute. `allow_download` is not part of the cell (it says where the
weights come from, not what they compute)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, fields
from pathlib import Path

from harness.errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
QUANTIZATIONS = ("4bit", "8bit")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class LoadOptions:
    dtype: str | None = None  # None: float32 on a CPU (bf16 matmuls are slow there), else the checkpoint's
    device_map: str | None = None  # accelerate places the weights over the visible devices
    quantization: str | None = None  # "4bit" / "8bit" weights through bitsandbytes
    attn_implementation: str | None = None  # None: transformers' default (sdpa where available)
    trust_remote_code: bool = False
    # generation prompts go through the tokenizer's chat template (a user turn, then the assistant's
    # turn begun with the task's answer prefix, as lm-eval's --apply_chat_template with gen_prefix)
    chat_template: bool = False
    allow_download: bool = False  # where the weights may come from: not part of the cell

    def __post_init__(self):
        for name, allowed in (
            ("dtype", DTYPES),
            ("device_map", DEVICE_MAPS),
            ("quantization", QUANTIZATIONS),
            ("attn_implementation", ATTN_IMPLEMENTATIONS),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise UserError(f"loading option {name} must be one of {', '.join(allowed)}, got {value!r}")
        for name in ("trust_remote_code", "chat_template", "allow_download"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"loading option {name} must be true or false, got {getattr(self, name)!r}")

    def config(self) -> dict:
        """The options that define the cell and differ from their defaults (hashed into the run id)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "allow_download" and getattr(self, f.name) != f.default
        }

    def check(self) -> None:
        """What the options need installed, checked before any weights are read."""
        if self.quantization and importlib.util.find_spec("bitsandbytes") is None:
            raise UserError(
                f"--load-in-{self.quantization} needs bitsandbytes, which is not installed "
                f"(pip install bitsandbytes; it also needs a CUDA GPU)"
            )
        if self.device_map and importlib.util.find_spec("accelerate") is None:
            raise UserError("--device-map needs accelerate: pip install accelerate")

    def kwargs(self, device: str) -> dict:
        """from_pretrained keyword arguments (the tokenizer takes the last two only)."""
        import torch

        if self.dtype is None:
            dtype = torch.float32 if device == "cpu" and not self.quantization else "auto"
        else:
            dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        out = {"dtype": dtype}
        if self.device_map:
            out["device_map"] = self.device_map
        if self.quantization:
            from transformers import BitsAndBytesConfig

            out["quantization_config"] = BitsAndBytesConfig(**{f"load_in_{self.quantization}": True})
        if self.attn_implementation:
            out["attn_implementation"] = self.attn_implementation
        return dict(out, trust_remote_code=self.trust_remote_code, local_files_only=not self.allow_download)

    @property
    def places_weights(self) -> bool:
        """The weights are already where they belong after loading (no `.to(device)`)."""
        return bool(self.device_map or self.quantization)

    @classmethod
    def from_args(cls, a) -> "LoadOptions":
        quant = "4bit" if getattr(a, "load_in_4bit", False) else "8bit" if getattr(a, "load_in_8bit", False) else None
        return cls(
            dtype=getattr(a, "dtype", None),
            device_map=getattr(a, "device_map", None),
            quantization=quant,
            attn_implementation=getattr(a, "attn_implementation", None),
            trust_remote_code=bool(getattr(a, "trust_remote_code", False)),
            chat_template=bool(getattr(a, "apply_chat_template", False)),
            allow_download=bool(getattr(a, "allow_download", False)),
        )

    @classmethod
    def from_mapping(cls, mapping, where: str) -> "LoadOptions":
        """A grid file's `loading:` mapping (keys as the fields, e.g. {dtype: bfloat16})."""
        if mapping is None:
            return cls()
        names = {f.name for f in fields(cls)}
        if not isinstance(mapping, dict) or set(mapping) - names:
            raise UserError(f"{where}: 'loading' must be a mapping with keys among {', '.join(sorted(names))}")
        return cls(**mapping)


def add_arguments(p, trust_help: str = "allow a checkpoint's own Python code (part of the run id)") -> None:
    """The loading flags of `harness eval` and `harness fit`."""
    g = p.add_argument_group("model loading (Hugging Face checkpoints; non-default values are part of the run id)")
    g.add_argument(
        "--dtype", choices=DTYPES, default=None, help="weights dtype (default: float32 on CPU, the checkpoint's on GPU)"
    )
    g.add_argument("--device-map", choices=DEVICE_MAPS, default=None, help="spread the weights with accelerate")
    q = g.add_mutually_exclusive_group()
    q.add_argument("--load-in-4bit", action="store_true", help="4-bit weights (needs bitsandbytes and a GPU)")
    q.add_argument("--load-in-8bit", action="store_true", help="8-bit weights (needs bitsandbytes and a GPU)")
    g.add_argument(
        "--attn-implementation",
        choices=ATTN_IMPLEMENTATIONS,
        default=None,
        help="transformers' attention kernel (default: its own choice)",
    )
    g.add_argument("--trust-remote-code", action="store_true", help=trust_help)
    g.add_argument(
        "--apply-chat-template",
        action="store_true",
        help="wrap generation prompts in the tokenizer's chat template (instruction-tuned models; part of the run id)",
    )
    g.add_argument(
        "--allow-download",
        action="store_true",
        help="let an hf: id download from the hub (default: the local cache only, fail at once)",
    )


def hub_cache() -> Path:
    """The hub cache folder as the environment names it now (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def require_cached(spec: str, repo_id: str, options: LoadOptions) -> None:
    """Refuse at once an hf: id that is not in the local cache, unless downloads are allowed."""
    if options.allow_download:
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub_cache()))
    except Exception:  # a malformed id (huggingface_hub validates it): it cannot be cached either
        found = None
    if not isinstance(found, str):
        raise UserError(
            f"model {spec} is not in the local Hugging Face cache ({hub_cache()}) and downloads are "
            f"off: point --model at a local folder, set HF_HOME to the cache that holds it, or pass "
            f"--allow-download"
        )
