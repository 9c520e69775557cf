"""The detection- and caption-based VBench dimensions (object_class, multiple_objects, color,
spatial_relationship, scene): VBench's rules (vbench/object_class.py, multiple_objects.py, color.py,
spatial_relationship.py, scene.py) applied to per-frame outputs of a detector / captioner.

GRiT (detectron2) and Tag2Text are not implemented in this project. Two backends feed the rules:

- `file`: per-frame outputs the user produced with the official GRiT / Tag2Text, one JSON object per
  line (JSONL):
      {"video": "a red car-0.mp4", "frame": 0,
       "boxes": [[x0, y0, x1, y1], ...], "classes": ["car", ...], "scores": [0.93, ...],
       "captions": ["a red car", ...], "caption": "a red car parked in a street"}
  `video` is the file name (or the source's video id); `frame` the index among the frames the user
  ran the model on (VBench: 16 frames sampled "middle" for multiple_objects and spatial_relationship;
  every frame for object_class, color and scene in VBench's current code); `boxes`/`classes`/`scores`
  come from GRiT's ObjectDet task and `captions` (one per box) from its DenseCap task, all four of
  equal length (`captions` may be omitted where unused); `caption` is Tag2Text's frame caption (scene).
  Detections with score <= score_threshold (0.5, GRiT's test threshold) are dropped.
- `synthetic_oracle`: HSV thresholding + connected components on the `synthetic_scenes` videos
  (tasks/_synthetic_oracle.py). A proxy for tests and reference runs, recorded calibrated: false.

The target of each video comes from VBench's prompt suite (`suite=` VBench_full_info.json,
`auxiliary_info`) or, without it, is parsed from the prompt (see `target`)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.tasks._vbench import position_score, raise_no_scores, scene_match
from harness.video import collect, load_all, report_loaded

COLOR_WORDS = (
    "white",
    "red",
    "pink",
    "blue",
    "silver",
    "purple",
    "orange",
    "green",
    "gray",
    "yellow",
    "black",
    "grey",
)  # color.py's list, in its order
RELATIONS = ("on the left of", "on the right of", "on the top of", "on the bottom of")


# -- VBench's rules on one video's per-frame outputs -------------------------------------------
# A frame is a list of detections {"class", "box", "score", "caption"} plus an optional "caption".
def object_frames(frames: list[dict], obj: str) -> list[float]:
    """object_class.py: a frame succeeds when the object is among its predicted class names."""
    return [float(obj in {d["class"] for d in f["dets"]}) for f in frames]


def multiple_frames(frames: list[dict], objects: str) -> list[float]:
    """multiple_objects.py: "A and B" split on ' and '; a frame succeeds when both are predicted."""
    a, b = (x.strip() for x in objects.split(" and "))
    return [float(a in (s := {d["class"] for d in f["dets"]}) and b in s) for f in frames]


def color_counts(frames: list[dict], color: str, obj: str) -> tuple[int, int]:
    """color.py check_generate: (frames where a detection of the object has any of the 12 colour
    words in its caption, frames where a detection of the object has the target colour in its
    caption). Substring tests, as VBench ("grey" in "greyhound" counts)."""
    with_any, with_target = 0, 0
    for f in frames:
        mine = [d.get("caption", "") for d in f["dets"] if d["class"] == obj]
        with_any += any(c in cap for cap in mine for c in COLOR_WORDS)
        with_target += any(color in cap for cap in mine)
    return with_any, with_target


def spatial_frames(frames: list[dict], a: str, b: str, relation: str) -> list[float]:
    """spatial_relationship.py check_generate: the boxes whose class is object_a or object_b (two of
    the same class count as a pair, as in VBench); a frame scores the max over pairs of
    position_score (0 with fewer than two boxes)."""
    out = []
    for f in frames:
        boxes = [d["box"] for d in f["dets"] if d["class"] in (a, b)]
        pairs = [
            position_score(boxes[i], boxes[j], relation) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
        ]
        out.append(float(max([0.0] + pairs)))
    return out


def scene_frames(frames: list[dict], scene: str) -> list[float]:
    """scene.py: a frame succeeds when every word of the scene label is a substring of its caption."""
    return [float(scene_match(scene, f.get("caption") or "")) for f in frames]


# -- targets: VBench's auxiliary_info, or parsed from the prompt -------------------------------
def _noun(phrase: str) -> str:
    words = [w for w in phrase.strip().split() if w not in ("a", "an", "the") and w not in COLOR_WORDS]
    return " ".join(words)


def target(dimension: str, prompt: str, suite: dict | None = None):
    """The auxiliary_info of `prompt` for `dimension` (VBench_full_info.json), else parsed from the
    prompt: object_class "a cube" -> "cube"; multiple_objects "a cube and a sphere" -> "cube and
    sphere"; color "a red cube" -> ("red", "cube") with color.py's object rule (remove "a ", "an "
    and the colour); spatial_relationship "a red cube on the left of a blue sphere, front view" ->
    ("cube", "sphere", "on the left of"); scene: the prompt itself. None when it cannot be parsed."""
    if suite is not None and prompt in suite and dimension in suite[prompt]:
        aux = suite[prompt][dimension]
        if dimension == "color":
            return aux["color"], prompt.replace("a ", "").replace("an ", "").replace(aux["color"], "").strip()
        if dimension == "spatial_relationship":
            return aux["object_a"], aux["object_b"], aux["relationship"]
        if dimension == "scene":
            return aux["scene"]
        return aux["object"]
    p = prompt.strip().lower()
    if dimension == "object_class":
        return _noun(p) or None
    if dimension == "multiple_objects":
        parts = p.split(" and ")
        return f"{_noun(parts[0])} and {_noun(parts[1])}" if len(parts) == 2 and all(map(_noun, parts)) else None
    if dimension == "color":
        color = next((w for w in p.split() if w in COLOR_WORDS), None)
        return (color, p.replace("a ", "").replace("an ", "").replace(color, "").strip()) if color else None
    if dimension == "spatial_relationship":
        m = re.match(rf"(.+?) ({'|'.join(RELATIONS)}) (.+?)(,|$)", p)
        return (_noun(m.group(1)), _noun(m.group(3)), m.group(2)) if m else None
    if dimension == "scene":
        return p or None
    raise ValueError(dimension)


def read_suite(path: str) -> dict:
    """VBench_full_info.json -> {prompt_en: auxiliary_info}."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
        return {e["prompt_en"]: e.get("auxiliary_info", {}) for e in entries}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"suite {path}: not a VBench full-info JSON list ({type(e).__name__}: {e})") from None


# -- the detections file -----------------------------------------------------------------------
def _number_list(v, n=None) -> bool:
    return (
        isinstance(v, list)
        and (n is None or len(v) == n)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    )


def read_detections(path: str, threshold: float) -> tuple[dict[str, dict[int, dict]], str]:
    """{video: {frame: {"dets": [...], "caption": str | None}}} and the file's sha256. Any malformed
    line is a UserError naming the file and line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"detections file {p}: {e.strerror or e}") from None
    out: dict[str, dict[int, dict]] = {}
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue

        def bad(msg):
            raise UserError(f"{p}:{n}: {msg}")

        try:
            obj = json.loads(line)
        except ValueError as e:
            bad(f"not JSON ({e})")
        if not isinstance(obj, dict):
            bad("expected a JSON object")
        video, frame = obj.get("video"), obj.get("frame")
        if not isinstance(video, str) or not video:
            bad("'video' must be a non-empty string (the video file name)")
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            bad("'frame' must be an integer >= 0")
        boxes, classes = obj.get("boxes", []), obj.get("classes", [])
        scores = obj.get("scores", [1.0] * len(classes))
        captions = obj.get("captions", [""] * len(classes))
        if not isinstance(boxes, list) or not all(_number_list(b, 4) and b[2] >= b[0] and b[3] >= b[1] for b in boxes):
            bad("'boxes' must be a list of [x0, y0, x1, y1] with x1 >= x0 and y1 >= y0")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            bad("'classes' must be a list of strings")
        if not _number_list(scores):
            bad("'scores' must be a list of numbers")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            bad("'captions' must be a list of strings")
        if not len(boxes) == len(classes) == len(scores) == len(captions):
            bad(
                f"boxes, classes, scores and captions differ in length "
                f"({len(boxes)}, {len(classes)}, {len(scores)}, {len(captions)})"
            )
        caption = obj.get("caption")
        if caption is not None and not isinstance(caption, str):
            bad("'caption' must be a string")
        frames = out.setdefault(video, {})
        if frame in frames:
            bad(f"video {video!r} frame {frame} appears twice")
        frames[frame] = {
            "dets": [
                {"class": c, "box": b, "score": s, "caption": cap}
                for b, c, s, cap in zip(boxes, classes, scores, captions)
                if s > threshold
            ],
            "caption": caption,
        }
    if not out:
        raise UserError(f"detections file {p} holds no frame")
    return out, hashlib.sha256(raw).hexdigest()


# -- the task base -----------------------------------------------------------------------------
@dataclass
class DetectionTask(Task):
    """One detection/caption dimension. Subclasses set `dimension`, `frame_weighted` where it is
    False, and `rule`. The smoke run scores synthetic_scenes videos with the oracle, the only
    backend that needs no outside files."""

    accepts = ("video_source",)
    needs_lm = False
    dimension = ""
    frame_weighted = True
    smoke_args = {"backend": "synthetic_oracle"}
    smoke_methods = ("synthetic_scenes",)  # the oracle only reads synthetic_scenes videos
    backend: str = field(
        default="file",
        metadata={
            "help": "file (GRiT/Tag2Text outputs, see `detections`) or "
            "synthetic_oracle (synthetic_scenes videos only; a proxy)"
        },
    )
    detections: str = field(default="", metadata={"help": "JSONL of per-frame GRiT/Tag2Text outputs (backend=file)"})
    suite: str = field(
        default="", metadata={"help": "VBench_full_info.json for the targets (else parsed from prompts)"}
    )
    num_frames: int = field(default=16, metadata={"help": "frames sampled 'middle' by the synthetic oracle"})
    score_threshold: float = field(default=0.5, metadata={"help": "drop detections scoring at most this (GRiT: 0.5)"})

    def __post_init__(self):
        if self.backend not in ("file", "synthetic_oracle"):
            raise ValueError("backend must be file or synthetic_oracle")
        if self.backend == "file" and not self.detections:
            raise ValueError(
                f"{self.name} needs detections=FILE.jsonl: per-frame outputs of the official GRiT / "
                f"Tag2Text (format in the README and tasks/_detections.py), or backend=synthetic_oracle "
                f"for the synthetic_scenes videos (a proxy)"
            )

    def rule(self, frames: list[dict], tgt) -> dict:
        """{"value": video score or None, "frame_scores": [...]}, from VBench's rule."""
        raise TypeError(f"{type(self).__name__} must define rule()")  # abstract: each subclass overrides it

    def frames_of(self, refs, ctx) -> tuple[list[tuple], list[dict], dict]:
        """[(ref, frames, input hash)], errors, provenance facts of the backend."""
        if self.backend == "synthetic_oracle":
            from harness.tasks._synthetic_oracle import detect

            loaded, errors = load_all(refs, ctx, self.num_frames, desc=self.name)
            out = [(ref, [detect(f) for f in v], hashlib.sha256(v.tobytes()).hexdigest()[:16]) for ref, v in loaded]
            return (
                out,
                errors,
                {
                    "backend": "synthetic_oracle",
                    "calibrated": False,
                    "note": "HSV-threshold oracle on synthetic shapes: a proxy, not a VBench number",
                },
            )
        table, sha = read_detections(self.detections, self.score_threshold)
        out, errors = [], []
        for ref in refs:
            keys = [k for k in (Path(ref.path).name if ref.path else None, ref.id) if k]
            hit = next((table[k] for k in keys if k in table), None)
            if hit is None:
                errors.append({"id": ref.id, "path": ref.path, "error": f"no frames in {self.detections}"})
                continue
            frames = [hit[i] for i in sorted(hit)]
            out.append((ref, frames, hashlib.sha256(json.dumps(frames, sort_keys=True).encode()).hexdigest()[:16]))
        report_loaded(ctx, len(out), errors)
        if not out:
            raise UserError(
                f"{self.name}: none of the {len(refs)} videos has frames in {self.detections} "
                f"(lines are matched by file name or video id)"
            )
        return (
            out,
            errors,
            {"backend": "file", "calibrated": True, "detections_file": str(self.detections), "detections_sha256": sha},
        )

    def run(self, ctx) -> TaskResult:
        refs = collect(ctx)  # a source that labels its videos by dimension: keep this one's, then limit
        mine = [r for r in refs if r.meta.get("dimension", self.dimension) == self.dimension][: ctx.limit or None]
        if not mine:
            raise UserError(f"{self.name}: the source has no {self.dimension} videos")
        suite = read_suite(self.suite) if self.suite else None
        videos, errors, facts = self.frames_of(mine, ctx)
        rows = []
        for ref, frames, h in videos:
            row = {"id": ref.id, "prompt": ref.prompt, "frames": len(frames), "input_hash": h}
            tgt = target(self.dimension, ref.prompt, suite)
            if tgt is None:
                row.update(value=None, reason=f"no {self.dimension} target in the prompt (pass suite=)")
            else:
                row.update(self.rule(frames, tgt), target=tgt)
            if "expected" in ref.meta:
                row["expected"] = ref.meta["expected"]
            rows.append(row)
        kept = [r for r in rows if r.get("value") is not None]
        if not kept:
            raise_no_scores(self.name, len(rows), sorted({r.get("reason", "") for r in rows}))
        details = dict(
            facts,
            unreadable=errors,
            excluded=len(rows) - len(kept),
            dimension=self.dimension,
            weighting="frames" if self.frame_weighted else "videos",
        )
        data_hash = hashlib.sha256("".join(r["input_hash"] for r in rows).encode()).hexdigest()
        per_video = Metric.mean([r["value"] for r in kept], "higher", "rate", "value")
        return TaskResult({self.main_metric: self.metric(kept), "per_video": per_video}, rows, details, data_hash)

    def metric(self, rows: list[dict]) -> Metric:
        if not self.frame_weighted:  # color: the mean of the per-video rates
            return Metric.mean([r["value"] for r in rows], "higher", "rate", "value")
        scores = [s for r in rows for s in r["frame_scores"]]
        return Metric.mean(scores, "higher", "frame rate")  # frame-weighted: not the mean of the video values


def frame_rule(scores: list[float]) -> dict:
    return {
        "value": float(np.mean(scores)) if scores else None,
        "frame_scores": scores,
        **({} if scores else {"reason": "no frames"}),
    }
