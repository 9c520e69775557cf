"""Shared pieces of the CLIP-family VBench tasks (aesthetic quality, appearance style, temporal
style, overall consistency, the I2V dimensions): the
PIL-path image transforms VBench applies to PIL images, the prompt-suite look-ups, and the
frame-weighted aggregate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from harness.errors import UserError
from harness.interfaces import Metric
from harness.backbones._common import IMAGENET, normalise
from harness.backbones.clip import CLIP_NORM
from harness.video import IMAGE_EXTENSIONS, require


# -- PIL-path transforms (torchvision transforms on PIL images) ---------------------------------
def pil_resize_crop(image: np.ndarray, short: int, crop: int) -> np.ndarray:
    """torchvision Resize(short, BICUBIC) + CenterCrop(crop) on a PIL image: PIL's bicubic
    resize (antialiased, uint8) of the short side to `short` (long side int(short·long/short_side),
    torchvision's rule), then the centre crop (offsets rounded as torchvision does)."""
    Image = require("PIL.Image")
    h, w = image.shape[:2]
    size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    img = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]), Image.BICUBIC))
    top, left = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    return img[top : top + crop, left : left + crop]


def to_tensor(images: np.ndarray, stats) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> ToTensor (/255) + Normalize(stats)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    return normalise(x, stats)


def clip_transform_image(frames: np.ndarray, n: int = 224) -> torch.Tensor:
    """VBench clip_transform_Image on PIL frames: Resize(n, bicubic) -> CenterCrop(n) -> ToTensor -> CLIP norm."""
    return to_tensor(np.stack([pil_resize_crop(f, n, n) for f in frames]), CLIP_NORM)


def dino_transform_image_internet(frames: np.ndarray) -> torch.Tensor:
    """vbench2_beta_i2v dino_transform_Image_internet on PIL images: Resize(256, bicubic) ->
    CenterCrop(224) -> ToTensor -> ImageNet norm."""
    return to_tensor(np.stack([pil_resize_crop(f, 256, 224) for f in frames]), IMAGENET)


def dino_transform_internet(frames: np.ndarray, antialias: bool = True) -> torch.Tensor:
    """vbench2_beta_i2v dino_transform_internet on a float frame tensor: Resize(256, bicubic) on the
    short side -> CenterCrop(224) -> /255 -> ImageNet norm. torchvision's tensor Resize antialiases
    by default since 0.17 (earlier versions did not); `antialias` picks."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    size = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
    x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    top, left = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
    return normalise(x[:, :, top : top + 224, left : left + 224] / 255, IMAGENET)


# -- prompt suites -------------------------------------------------------------------------------
def read_suite(path: str, task: str) -> list[dict]:
    """VBench's prompt suite (VBench_full_info.json, vbench2_i2v_full_info.json): a list of
    {"prompt_en", "dimension", "auxiliary_info", ("image_name")}."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{task}: cannot read the prompt suite {path}: {e}") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) and "prompt_en" in d for d in data):
        raise UserError(f"{task}: {path} is not a VBench suite (a list of objects with 'prompt_en')")
    return data


def suite_lookup(suite: list[dict], prompt: str) -> dict | None:
    return next((d for d in suite if d["prompt_en"] == prompt), None)


def find_image(folder: Path, name: str) -> Path | None:
    """`name` itself, else `name` + an image extension (VBench-I2V names images after the prompt)."""
    for candidate in [folder / name] + [folder / f"{name}{ext}" for ext in IMAGE_EXTENSIONS]:
        if candidate.is_file():
            return candidate
    return None


def read_image(path: Path) -> np.ndarray:
    Image = require("PIL.Image")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as e:
        raise UserError(f"unreadable image {path}: {e}") from None


# -- aggregation ---------------------------------------------------------------------------------
def frame_weighted(rows: list[dict], main: str, unit: str) -> dict[str, Metric]:
    """The dimension as VBench computes it on one process: the sum of all frame scores over their
    count; `per_video` is the mean of the per-video means."""
    scores = [s for r in rows for s in r.get("frame_scores", [])]
    videos = [r["value"] for r in rows if r.get("value") is not None]
    return {main: Metric.mean(scores, "higher", unit), "per_video": Metric.mean(videos, "higher", unit, "value")}


# -- the conditioning image of the I2V dimensions ------------------------------------------------
def condition_image(task, ref) -> tuple[np.ndarray | None, str]:
    """The image a video was generated from: with `images=DIR` (VBench-I2V: data/crop/<ratio>), the
    suite's `image_name` for the prompt (`suite=`, vbench2_i2v_full_info.json), else a file named
    after the prompt; without a folder, the one the source supplies (synthetic_videos: its first
    frame), else with `first_frame_as_image` the video's own first frame. (None, reason) when there
    is none."""
    if task.images:
        folder = Path(task.images).expanduser()
        if not folder.is_dir():
            raise UserError(f"{task.name}: images={task.images} is not a folder")
        entry = suite_lookup(task._suite, ref.prompt) if task._suite else None
        name = entry.get("image_name") if entry else None
        path = find_image(folder, name or ref.prompt)
        if path is None:
            return None, f"no image {name or ref.prompt!r}(.png/.jpg...) in {folder}"
        return read_image(path), str(path)
    supplied = ref.meta.get("condition_image")
    if supplied is not None:
        return supplied(), "supplied by the video source"
    if getattr(task, "first_frame_as_image", False):
        return ref.load(None)[0], "the video's own first frame (first_frame_as_image; not VBench-I2V's protocol)"
    return None, "no conditioning image: pass images=DIR (VBench-I2V's data/crop/<ratio>)"
