"""The built-in synthetic videos: ground truth for the video tasks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.registry import register
from harness.synthetic_video import MOTIONS, PROMPT, synthetic_video
from harness.video import VideoRef, write_video
from harness.methods.video._common import VideoSource


def export_suite(folder: str | Path, refs: list[VideoRef], dimensions: list[str]) -> Path:
    """Write the videos as `<prompt>-<index>.mp4` and the prompt suite in VBench's full-info format
    (a list of {"prompt_en", "dimension", "auxiliary_info"}), so VBench or `video_folder` can read them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    for ref in refs:
        i = seen.get(ref.prompt, 0)
        seen[ref.prompt] = i + 1
        write_video(folder / f"{ref.prompt}-{i}.mp4", ref.load(None), int(ref.fps))
    suite = [{"prompt_en": p, "dimension": list(dimensions), "auxiliary_info": {}} for p in seen]
    out = folder / "full_info.json"
    out.write_text(json.dumps(suite, indent=1))
    return out


@register
@dataclass
class SyntheticVideos(VideoSource):
    """Procedural videos with known ground truth (harness.synthetic_video): a smooth random
    texture seen by a static, panning, tilting or zooming camera, or textured shapes moving over
    it; controllable flicker, pixel noise and frame drops. Not a generative model: a test fixture
    and a calibration reference for the weight-free dimensions.

    motions: which videos (one or more of static, pan_left, pan_right, tilt_up, tilt_down,
    zoom_in, zoom_out, shapes). per_motion: videos per motion (VBench samples 5 per prompt).
    export: a folder to also write them to in VBench naming, with the prompt suite (full_info.json)."""

    name = "synthetic_videos"
    paper = "VBench: Comprehensive Benchmark Suite for Video Generative Models (arXiv:2311.17982)"
    smoke_args = {"per_motion": "1", "frames": "16", "size": "48"}
    ranges = {
        "per_motion": "[1, inf)",
        "frames": "[1, inf)",
        "size": "[1, inf)",
        "speed": "[0, inf)",
        "flicker": "[0, inf)",
        "noise": "[0, inf)",
        "drop": "[0, 1]",
        "fps": "[1, inf)",
    }  # checked by params.build before any model loads
    motions: tuple[str, ...] = field(default=MOTIONS, metadata={"help": f"any of {', '.join(MOTIONS)}"})
    per_motion: int = field(default=2, metadata={"help": "videos per motion (different seeds)"})
    frames: int = 16
    size: int = field(default=64, metadata={"help": "frame height and width"})
    speed: float = field(default=1.5, metadata={"help": "pixels per frame"})
    flicker: float = field(default=0.0, metadata={"help": "brightness alternation, fraction of 255"})
    noise: float = field(default=0.0, metadata={"help": "pixel noise std (0..255 scale)"})
    drop: float = field(default=0.0, metadata={"help": "probability a frame repeats the previous one"})
    fps: int = 8
    export: str = field(default="", metadata={"help": "also write mp4s + full_info.json to this folder"})

    def __post_init__(self):
        for m in self.motions:
            if m not in MOTIONS:
                raise ValueError(f"unknown motion {m!r}; choose from {', '.join(MOTIONS)}")
        if self.per_motion < 1 or self.frames < 2 or self.size < 16:
            raise ValueError("need per_motion >= 1, frames >= 2, size >= 16")

    def videos(self, ctx):
        refs = []
        for motion in self.motions:
            for i in range(self.per_motion):
                seed = ctx.seed * 1000 + 17 * MOTIONS.index(motion) + i
                args = dict(
                    motion=motion,
                    frames=self.frames,
                    size=self.size,
                    speed=self.speed,
                    flicker=self.flicker,
                    noise=self.noise,
                    drop=self.drop,
                    seed=seed,
                )
                # the first frame doubles as the conditioning image of the image-to-video dimensions
                refs.append(
                    VideoRef(
                        id=f"{motion}-{i}",
                        prompt=PROMPT[motion],
                        loader=lambda n, a=args: _frames(a, n),
                        fps=self.fps,
                        meta=dict(args, condition_image=lambda a=args: _frames(a, None)[0]),
                    )
                )
        if self.export:
            export_suite(self.export, refs, [])
        return refs


def _frames(args: dict, n: int | None):
    from harness.video import middle_indices

    v = synthetic_video(**args)
    return v if not n else v[middle_indices(len(v), n)]
