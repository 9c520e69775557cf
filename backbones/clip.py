"""CLIP from open_clip (`open_clip_torch`, the `video` extra): the architecture built by
`open_clip.create_model(arch, pretrained=None)` — nothing downloaded — with the activation the
checkpoint was trained with (open_clip's registry of pretrained tags: OpenAI's CLIPs use
QuickGELU, most LAION ones GELU), and the user's local checkpoint loaded into it with strict key
checks: OpenAI's TorchScript archives (`ViT-B-32.pt`, `ViT-L-14.pt`), weights-only pickles or
safetensors files in OpenAI's / open_clip's layout (`visual.*`, the text tower at top level,
`logit_scale`). The tokenizer is open_clip's SimpleTokenizer (OpenAI's BPE, shipped in the
open_clip wheel). VBench's CLIP preprocessing (`clip_transform`) is kept here: it is VBench's, not
a model."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F

from harness.backbones._common import load_checked, load_state, normalise
from harness.errors import UserError
from harness.video import require

# OpenAI's image statistics (open_clip.constants.OPENAI_DATASET_MEAN / _STD), here as literals so
# that importing a task does not import open_clip
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# ints OpenAI's TorchScript archives keep next to the weights (open_clip's build_model_from_openai_state_dict drops them)
_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


def open_clip():
    return require("open_clip")


def create_clip(arch: str, tag: str = "openai", task: str = "clip"):
    """open_clip's `arch` (e.g. ViT-B-32, ViT-L-14) with the activation of the checkpoint `tag`
    (open_clip's pretrained tag: openai, laion2b_s34b_b79k, ...), random init, in eval mode."""
    oc = open_clip()
    cfg = oc.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(oc.list_pretrained_tags_by_model(arch)) or "none"
        raise UserError(f"{task}: open_clip has no checkpoint {tag!r} of {arch} (its tags for {arch}: {tags})")
    return oc.create_model(arch, pretrained=None, force_quick_gelu=bool(cfg.get("quick_gelu", False))).eval()


def clip_state(path) -> dict:
    """The checkpoint's state dict in open_clip's names: OpenAI's TorchScript ints dropped, a
    DataParallel `module.` prefix stripped."""
    if str(path).endswith(".safetensors"):
        state = require("safetensors.torch").load_file(str(path))
    else:
        state = load_state(path)
    return {k.removeprefix("module."): v for k, v in state.items() if k not in _NON_WEIGHTS}


def load_clip(model, path, task: str, tower: str = ""):
    """Load the checkpoint at `path` into an open_clip CLIP (tower="") or into one of its towers
    (tower="visual": only the `visual.*` entries, into model.visual), strictly. Returns the module."""
    state = clip_state(path)
    if tower:
        state = {k[len(tower) + 1 :]: v for k, v in state.items() if k.startswith(f"{tower}.")}
        model = getattr(model, tower)
    elif "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    return load_checked(model, state, task, path, "open_clip's CLIP layout").eval()


def similarity_logits(model, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits_per_text of OpenAI's CLIP.forward: exp(logit_scale)·cos(text, image), [texts, images]."""
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(ids, normalize=True)
    return model.logit_scale.exp() * txt @ img.t()


@lru_cache()
def _simple_tokenizer():
    return open_clip().tokenizer.SimpleTokenizer()


def tokenize(texts, context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """OpenAI's clip.tokenize with open_clip's SimpleTokenizer: <|startoftext|> BPE ids
    <|endoftext|>, zero padding to context_length. Too long a text raises as clip.tokenize does,
    unless truncate (then the last kept id becomes <|endoftext|>, as open_clip and ViCLIP do)."""
    tok = _simple_tokenizer()
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not truncate:
        for t in texts:
            if len(tok.encode(t)) + 2 > context_length:
                raise UserError(f"text longer than CLIP's context of {context_length} tokens: {t[:60]!r}...")
    return tok(texts, context_length=context_length)


# -- preprocessing (VBench utils.py) -----------------------------------------------------------
def clip_transform(frames: np.ndarray, n: int = 224, uint8: bool = False) -> torch.Tensor:
    """VBench's CLIP preprocessing: Resize(n, bicubic, antialias=False) on the short side, CenterCrop(n), /255, CLIP normalisation.
    uint8: VBench handed torchvision a uint8 tensor (decord's torch bridge), so the resized image
    is rounded and clamped to 0..255 as torchvision does for integer input."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    size = (n, max(n, int(w * n / h))) if h <= w else (max(n, int(h * n / w)), n)  # torchvision truncates
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
    x = x.round().clamp(0, 255) if uint8 else x
    top, left = int(round((x.shape[2] - n) / 2.0)), int(round((x.shape[3] - n) / 2.0))  # torchvision CenterCrop
    return normalise(x[:, :, top : top + n, left : left + n] / 255, CLIP_NORM)
