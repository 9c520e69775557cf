"""Reading and writing videos (PyAV for mp4/webm/gif/avi/mkv/mov, OpenCV for frame folders), VBench's
"middle" frame sampling, and the reference a video source hands to a video task.

Frames are uint8 RGB arrays [T, H, W, 3]. A file that cannot be read, or holds no frame, raises
UserError naming it; video tasks catch that per video, list it in the record and score the rest."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from harness.errors import UserError
from harness.interfaces import VideoSource

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".avi", ".mkv", ".mov")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def require(module: str):
    """Import an optional dependency of the video tasks, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"the video tasks need the Python package for {module!r}: pip install 'harness-eval[video]'"
        ) from None


def middle_indices(total: int, n: int) -> list[int]:
    """VBench's sample="middle": split [0, total) into n equal intervals, take each one's midpoint
    (the interval bounds are truncated to integers, as in VBench's get_frame_indices)."""
    if n >= total:
        return list(range(total))
    bounds = np.linspace(0, total, n + 1).astype(int)
    return [int((bounds[i] + bounds[i + 1] - 1) // 2) for i in range(n)]


def read_video(path: str | Path, num_frames: int | None = None) -> np.ndarray:
    """All frames (or `num_frames` sampled "middle") of a video file or a folder of frame images."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if num_frames:
                files = [files[i] for i in middle_indices(len(files), num_frames)]
            cv2 = require("cv2")
            frames = []
            for f in files:
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is None:
                    raise UserError(f"unreadable frame image {f}")
                frames.append(img[..., ::-1])
        else:
            av = require("av")
            with av.open(str(path)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            if num_frames:
                frames = [frames[i] for i in middle_indices(len(frames), num_frames)]
    except UserError:
        raise
    except Exception as e:  # PyAV raises many error types for broken or non-video files
        raise UserError(f"unreadable video {path}: {type(e).__name__}: {e}") from None
    if not frames:
        raise UserError(f"empty video {path}: no frames")
    if len({f.shape for f in frames}) > 1:
        raise UserError(f"video {path}: frames of different sizes")
    return np.ascontiguousarray(np.stack(frames))


def video_fps(path: str | Path, default: float = 8.0) -> float:
    path = Path(path)
    if path.is_dir():
        return default
    try:
        with require("av").open(str(path)) as c:
            rate = c.streams.video[0].average_rate
            return float(rate) if rate else default
    except Exception:
        return default


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """mp4 (H.264, yuv420p), webm (VP9), gif, or a folder of PNG frames when the path has no suffix."""
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if not path.suffix:
        cv2 = require("cv2")
        path.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            cv2.imwrite(str(path / f"{i:05d}.png"), f[..., ::-1])
        return path
    av = require("av")
    codec, pix = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"), ".gif": ("gif", "rgb8")}.get(
        path.suffix.lower(), ("ffv1", "bgr0")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], pix
        if codec == "libx264":
            s.options = {"crf": "0"} if frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 else {}
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def prompt_from_filename(name: str) -> str:
    """VBench custom-input naming: `<prompt>-<index>.<ext>` -> prompt."""
    stem = name
    for ext in VIDEO_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    return re.sub(r"-\d+$", "", stem)


@dataclass
class VideoRef:
    """One video a source offers: a stable id, its prompt, and how to load its frames."""

    id: str
    prompt: str
    loader: Callable[[int | None], np.ndarray] = field(repr=False)
    fps: float = 8.0
    path: str | None = None
    meta: dict = field(default_factory=dict)  # ground truth of synthetic videos (motion, flicker, ...)

    def load(self, num_frames: int | None = None) -> np.ndarray:
        return self.loader(num_frames)


def collect(ctx, limit: int | None = None, request=None) -> list[VideoRef]:
    """The videos of the cell's video_source methods (a task accepts one source per cell), or, with
    a generator model (`--model diffusers:PATH`), the videos it renders for the task's `request`
    (harness.generator.GenerationRequest) from the cell's noise prior."""
    from harness import generator

    if generator.is_spec(getattr(ctx, "model", None)):
        if request is None:
            raise UserError(f"this task has no prompt suite to generate from with --model {ctx.model}")
        return generator.videos(ctx, request, limit)
    refs = []
    for m in ctx.methods:
        refs += m.videos(ctx)
    if not refs:
        raise UserError("the video source yielded no videos")
    return refs[:limit] if limit else refs


def load_all(refs: list[VideoRef], ctx, num_frames: int | None = None, desc: str = "videos"):
    """Load every video; an unreadable one becomes an error entry (named), the rest are scored."""
    loaded, errors = [], []
    for ref in ctx.iterate(refs, total=len(refs), desc=desc):
        try:
            loaded.append((ref, ref.load(num_frames)))
        except UserError as e:
            errors.append({"id": ref.id, "path": ref.path, "error": str(e)})
    report_loaded(ctx, len(loaded), errors)
    if not loaded:
        raise UserError("no readable video: " + "; ".join(e["error"] for e in errors[:5]))
    return loaded, errors


def report_loaded(ctx, readable: int, errors: list[dict]) -> None:
    """Tell the cell's video sources how many of their videos the task could read (their effect check)."""
    for m in ctx.methods:
        if isinstance(m, VideoSource):
            m.note_loaded(readable, errors)
