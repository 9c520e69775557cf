"""Model loading: `zoo:<name>` (the embedded reference models) or a Hugging Face checkpoint
(`hf:<id>` or a local folder), through transformers' Auto classes, safetensors only."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.loading import LoadOptions, require_cached

DEFAULT_MODEL = "zoo:tiny-llama"


@dataclass
class LoadedModel:
    id: str  # as the user named it, normalised ("zoo:tiny-llama", "hf:org/x", a path)
    model: Any
    tokenizer: Any
    device: str
    sha256: str | None  # of the weights (safetensors files, in name order)
    zoo: bool = False
    info: dict = field(default_factory=dict)  # zoo card fields or checkpoint facts


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:  # a weights "file" that is a FIFO would block forever, a folder cannot be read
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(f"model weights {path}: not a regular file")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise UserError(f"model weights {path}: unreadable ({e.strerror or e})") from None
    return h.hexdigest()


def weights_sha256(folder: Path) -> str | None:
    """sha256 of the safetensors weights (of the pickle files for a checkpoint loaded with
    --allow-pickle); one file's hash, or the hash of the per-file hashes.
    Cached by (path, size, mtime) because real checkpoints are many GB."""
    files = sorted(folder.glob("*.safetensors")) or sorted(list(folder.glob("*.bin")) + list(folder.glob("*.pt")))
    if not files:
        return None
    cache_path = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")) / "sha256.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    digests = []
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if key not in cache:
            cache[key] = file_sha256(f)
        digests.append(cache[key])
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # the cache is an optimisation only
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def _pickle_only(folder: Path) -> bool:
    return not list(folder.glob("*.safetensors")) and bool(list(folder.glob("*.bin")) or list(folder.glob("*.pt")))


def _refuse_pickle(folder: Path, allow_pickle: bool) -> None:
    if _pickle_only(folder) and not allow_pickle:
        raise UserError(
            f"{folder} holds only pickle-format weights (.bin/.pt), which can execute code "
            f"when loaded; the harness loads safetensors only. Convert the checkpoint, or pass "
            f"--allow-pickle if you trust its source."
        )


HEADS = ("causal_lm", "token_classification", "sequence_classification", "base")


def load(
    spec: str,
    device: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    head: str = "causal_lm",
    options: LoadOptions | None = None,
) -> LoadedModel:
    """`head` picks the transformers Auto class: causal_lm (default), token_classification or
    sequence_classification (reward and process-reward models), base (AutoModel, e.g. a PRM whose
    remote code defines its own head). `options`: dtype, device map, quantization, attention
    kernel, remote code, downloads (harness.loading; `trust_remote_code` is the short form)."""
    from harness.zoo import registry as zoo

    options = options or LoadOptions()
    if trust_remote_code:
        options = replace(options, trust_remote_code=True)
    options.check()
    dev = pick_device(device)
    if spec.startswith("zoo:"):
        folder, info = zoo.verified_folder(spec[4:])
        options = replace(options, trust_remote_code=False)
        return _load_folder(spec, folder, dev, options, zoo=True, info=info, head=head)
    ref = spec[3:] if spec.startswith("hf:") else spec
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json")
        _refuse_pickle(path, allow_pickle)
        weights_sha256(path)  # unreadable weights (a FIFO, a folder) are refused before transformers opens them
        return _load_folder(f"{path.resolve()}", path, dev, options, pickle=_pickle_only(path), head=head)
    if not spec.startswith("hf:"):
        raise _unknown(spec)
    require_cached(spec, ref, options)  # fails at once, before transformers retries the network
    return _load_folder(spec, ref, dev, options, head=head)


def _load_folder(
    model_id: str,
    where,
    device: str,
    options: LoadOptions,
    zoo: bool = False,
    info: dict | None = None,
    pickle: bool = False,
    head: str = "causal_lm",
) -> LoadedModel:
    import pickle as pickle_module

    import transformers
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    if head not in HEADS:
        raise UserError(f"model head must be one of {', '.join(HEADS)}, got {head!r}")
    auto = getattr(
        transformers,
        {
            "causal_lm": "AutoModelForCausalLM",
            "base": "AutoModel",
            "token_classification": "AutoModelForTokenClassification",
            "sequence_classification": "AutoModelForSequenceClassification",
        }[head],
    )

    transformers.logging.set_verbosity_error()  # per-weight progress bars and length reminders
    transformers.utils.logging.disable_progress_bar()
    kwargs = options.kwargs(device)  # float32 on CPU unless --dtype says otherwise
    hub = {k: kwargs[k] for k in ("trust_remote_code", "local_files_only")}
    warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the error below says it all
    try:
        tok = AutoTokenizer.from_pretrained(str(where), **hub)
        if head == "causal_lm":
            config = transformers.AutoConfig.from_pretrained(str(where), **hub)
            if _image_text_to_text(config):  # LLaVA family: a causal LM over text and images
                auto = transformers.AutoModelForImageTextToText
            auto = _architecture_class(config) or auto
        model = auto.from_pretrained(str(where), use_safetensors=not pickle, **kwargs)
    except (OSError, ValueError, ImportError, RuntimeError, pickle_module.UnpicklingError, SafetensorError) as e:
        # also a truncated or junk safetensors file, or a pickle torch's weights-only loader refuses
        first = _first_line(e)
        if isinstance(e, pickle_module.UnpicklingError):
            first = "its pickle holds more than tensors (refused by torch's weights-only loader: it could run code)"
        raise UserError(f"cannot load model {model_id!r}: {first}") from None
    if options.places_weights:  # accelerate / bitsandbytes placed them: the inputs go where they start
        device = str(model.device)
    else:
        model.to(device)
    model.eval()
    folder = Path(where) if Path(str(where)).exists() else _hub_folder(str(where))
    sha = weights_sha256(folder) if folder else None
    if info and info.get("sha256") and sha != info["sha256"]:
        raise UserError(f"zoo model {model_id} weights sha256 {sha} do not match the manifest")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    info = dict(info or {}, weights_format="pickle (--allow-pickle)" if pickle else "safetensors")
    return LoadedModel(model_id, model, tok, device, sha, zoo, info)


def _architecture_class(config):
    """The class for a layout of the harness's own that transformers' Auto classes do not know (a
    Cross-Layer Attention model: harness.cla), None otherwise."""
    from harness import cla

    return cla.model_class(config)


def _image_text_to_text(config) -> bool:
    """A vision-language checkpoint (e.g. LlavaForConditionalGeneration) that AutoModelForCausalLM
    does not map but AutoModelForImageTextToText does: it generates text like a causal LM."""
    from transformers.models.auto import modeling_auto as auto

    kind = config.model_type
    return (
        kind not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind in auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    )


def _hub_folder(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        from harness.loading import hub_cache

        return Path(
            snapshot_download(
                repo_id, local_files_only=True, allow_patterns=["*.safetensors"], cache_dir=str(hub_cache())
            )
        )
    except Exception:  # hashing is best-effort for hub ids; the record then says sha256: null
        return None


def identity(spec: str, options: LoadOptions | None = None) -> tuple[str, str | None]:
    """(normalised id, weights sha256) without loading the model, for the resume check; an hf: id
    missing from the cache is refused here already unless downloads are allowed."""
    from harness.zoo import registry as zoo

    if spec == "none":
        return spec, None
    if spec.startswith("zoo:"):
        return spec, zoo.card(spec[4:]).get("sha256")
    if spec.startswith("diffusers:"):  # a video generator (harness.generator): every component's weights
        from harness import generator

        return generator.identity(spec)
    ref = spec[3:] if spec.startswith("hf:") else spec
    path = Path(ref).expanduser()
    if path.exists():
        return str(path.resolve()), weights_sha256(path)
    if not spec.startswith("hf:"):
        raise _unknown(spec)
    require_cached(spec, ref, options or LoadOptions())
    folder = _hub_folder(ref)
    return spec, weights_sha256(folder) if folder else None


def generation_refusal(spec: str) -> str | None:
    """Why `spec` is not a causal LM that generates text, read from its config.json alone (no
    weights load); None when it is one, or when its config cannot tell (loading then reports what
    is wrong). A reward model or classifier checkpoint would otherwise load through
    AutoModelForCausalLM with a freshly initialised LM head, and sample noise without a word."""
    from transformers.models.auto import modeling_auto as auto

    if spec == "none":
        return "--model none names no model"
    if spec.startswith("zoo:"):  # the zoo holds causal LMs only
        return None
    ref = spec[3:] if spec.startswith("hf:") else spec
    found = Path(ref).expanduser() / "config.json"
    if not found.is_file():
        from huggingface_hub import try_to_load_from_cache

        from harness.loading import hub_cache

        try:
            cached = try_to_load_from_cache(ref, "config.json", cache_dir=str(hub_cache()))
        except Exception:  # not a hub id either: loading says so
            cached = None
        if not isinstance(cached, str):
            return None
        found = Path(cached)
    try:
        cfg = json.loads(found.read_text())
    except (OSError, ValueError):
        return None
    generating = set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) | set(
        auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values()
    )
    archs = cfg.get("architectures") or []
    if archs:
        if any(a in generating or a.endswith("ForCausalLM") for a in archs):
            return None
        if "AutoModelForCausalLM" in (cfg.get("auto_map") or {}):  # remote code declaring a causal LM
            return None
        return f"{spec} is a {', '.join(archs)}, which has no text-generating head"
    kind = cfg.get("model_type")
    if (
        kind
        and kind not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and kind not in (auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    ):
        return f"{spec} is a {kind!r} model, which transformers cannot load as a causal LM"
    return None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _unknown(spec: str) -> UserError:
    return UserError(
        f"unknown model {spec!r}: use zoo:<name> (see `harness zoo list`), hf:<org/name>, or a local folder"
    )


def skeleton(spec: str, options: LoadOptions | None = None):
    """The model's modules on the meta device, from its config alone (no weights are read, so a 70B
    checkpoint costs as little as a tiny one): what harness.compat inspects for `harness list`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.zoo import registry as zoo

    options = options or LoadOptions()
    if spec.startswith("zoo:"):
        where = zoo.verified_folder(spec[4:])[0]
    else:
        ref = spec[3:] if spec.startswith("hf:") else spec
        where = Path(ref).expanduser()
        if not where.exists():
            if not spec.startswith("hf:"):
                raise _unknown(spec)
            require_cached(spec, ref, options)
            where = ref
    trust = options.trust_remote_code
    try:
        cfg = AutoConfig.from_pretrained(
            str(where), trust_remote_code=trust, local_files_only=not options.allow_download
        )
        own = _architecture_class(cfg)
        with torch.device("meta"):
            return own(cfg) if own else AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust)
    except (OSError, ValueError, ImportError, KeyError) as e:
        raise UserError(f"cannot read model {spec!r}: {_first_line(e)}") from None


def label(loaded) -> str:
    if loaded.zoo:
        n = sum(p.numel() for p in loaded.model.parameters())
        return (
            f"embedded zoo model ({n / 1e6:.1f}M parameters, trained on the project's synthetic "
            f"corpus): results are for this tiny reference model, not for real LLMs"
        )
    return "Hugging Face checkpoint"


def zoo_version(loaded) -> dict:
    """{"zoo_version": N} for a zoo model (its config's, 1 when it records none), else {}: the
    record names the zoo generation, so results of old and new zoo models never mix silently."""
    if not loaded.zoo:
        return {}
    from harness.zoo.registry import version_of

    return {"zoo_version": version_of(loaded.model.config)}


def facts(loaded) -> dict:
    """What the record keeps of the loaded model's configuration."""
    cfg = loaded.model.config
    return {
        "architecture": (getattr(cfg, "architectures", None) or [type(loaded.model).__name__])[0],
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
        "weights_format": loaded.info.get("weights_format", "safetensors"),
        "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "device_map": sorted({str(d) for d in (getattr(loaded.model, "hf_device_map", None) or {}).values()}) or None,
        "quantization": _quant_method(getattr(cfg, "quantization_config", None)),
    }


def _quant_method(q) -> str | None:
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return str(getattr(method, "value", method))
