"""Generated videos in a folder, named the VBench way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.registry import register
from harness.video import VIDEO_EXTENSIONS, VideoRef, prompt_from_filename, read_video, video_fps
from harness.methods.video._common import VideoSource


@register
@dataclass
class VideoFolder(VideoSource):
    """A folder of generated videos in VBench's naming, `<prompt>-<index>.mp4` (VBench README:
    5 samples per prompt, index 0..4; "custom_input" mode takes the prompt from the file stem with
    `-<index>` stripped). mp4, webm, gif, avi, mkv and mov files, and sub-folders of frame images
    (png/jpg; the folder name is the video's name), are read.

    path: the folder. fps: frame rate assumed for frame folders."""

    name = "video_folder"
    paper = "VBench: Comprehensive Benchmark Suite for Video Generative Models (arXiv:2311.17982)"
    smoke_args = {"path": "{videos}"}
    ranges = {"fps": "(0, inf)"}  # checked by params.build before any model loads
    path: str = field(default="", metadata={"help": "folder of <prompt>-<index>.<ext> videos or frame folders"})
    fps: float = field(default=8.0, metadata={"help": "fps of frame folders"})

    def videos(self, ctx):
        root = Path(self.path).expanduser()
        if not self.path or not root.is_dir():
            raise UserError(f"video_folder: {self.path!r} is not a folder (--method-arg path=DIR)")
        entries = sorted(
            p
            for p in root.iterdir()
            if p.suffix.lower() in VIDEO_EXTENSIONS or (p.is_dir() and not p.name.startswith("."))
        )
        if not entries:
            raise UserError(f"video_folder: no videos ({', '.join(VIDEO_EXTENSIONS)}) or frame folders in {root}")
        return [
            VideoRef(
                id=p.name,
                prompt=prompt_from_filename(p.name),
                loader=lambda n, p=p: read_video(p, n),
                fps=self.fps if p.is_dir() else video_fps(p, self.fps),
                path=str(p),
            )
            for p in entries
        ]
