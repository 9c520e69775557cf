"""Shared pieces of the VBench tasks: the per-video loop, classical optical flow, and VBench's
exact scoring rules and aggregation constants (Vchitect/VBench: vbench/*.py, scripts/constant.py,
scripts/cal_final_score.py, scripts/cal_i2v_final_score.py; see shared/reference/anchors-video.md).

Scoring rules are pure functions of a backbone's outputs, so they are exact and tested with mocked
outputs; a task is only as faithful as the backbone that feeds it (RAFT, AMT, CoTracker, DINO, ...
are replaced by OpenCV in the `*_proxy` tasks, whose values are not leaderboard-comparable)."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

from harness.interfaces import Metric, Task, TaskResult
from harness.tasks._generation import Generated
from harness.video import collect, load_all, require


# -- the per-video loop ------------------------------------------------------------------------
class VideoTask(Generated, Task):
    """A task scoring each video of the cell's video source, or of a generator (`--model
    diffusers:PATH`) that renders the benchmark's prompts for its dimension; subclasses define
    `score(ref, frames)` returning a dict with at least `value` (or None to exclude the video, with
    a `reason`)."""

    accepts = ("video_source",)
    needs_lm = False
    num_frames: int | None = None  # frames to sample ("middle"); None = all frames
    direction = "higher"
    unit = "score"
    calibrated = True

    def score(self, ref, frames) -> dict:
        raise TypeError(f"{type(self).__name__} must define score()")  # abstract: each subclass overrides it

    def aggregate(self, rows: list[dict]) -> dict[str, Metric]:
        vals = [r["value"] for r in rows if r.get("value") is not None]
        return {self.main_metric: Metric.mean(vals, self.direction, self.unit, "value")}

    def run(self, ctx) -> TaskResult:
        limits = [n for n in (ctx.limit, getattr(self, "max_videos", 0)) if n]
        refs = collect(ctx, min(limits) if limits else None, self.generation_request())
        loaded, errors = load_all(refs, ctx, self.num_frames, desc=self.name)
        rows = []
        for ref, frames in loaded:
            row = {
                "id": ref.id,
                "prompt": ref.prompt,
                "frames": int(frames.shape[0]),
                "input_hash": hashlib.sha256(frames.tobytes()).hexdigest()[:16],
            }
            if "prompt_id" in ref.meta:  # a generated video: the seed it was sampled with (VBench asks to record it)
                row.update(prompt_id=ref.meta["prompt_id"], seed=ref.meta["seed"], sample_index=ref.meta["index"])
            row.update(self.score(ref, frames))
            rows.append(row)
        kept = [r for r in rows if r.get("value") is not None]
        if not kept:
            reasons = sorted({r.get("reason", "") for r in rows})
            raise_no_scores(self.name, len(rows), reasons)
        details = {
            "calibrated": self.calibrated,
            "unreadable": errors,
            "excluded": len(rows) - len(kept),
            "backend": getattr(self, "backend", "harness"),
        }
        data_hash = hashlib.sha256("".join(r["input_hash"] for r in rows).encode()).hexdigest()
        return TaskResult(self.aggregate(rows), rows, details, data_hash)


def raise_no_scores(task: str, n: int, reasons: list[str]):
    from harness.errors import UserError

    raise UserError(f"{task}: none of the {n} readable videos could be scored ({'; '.join(reasons)})")


# -- classical optical flow (OpenCV) -----------------------------------------------------------
def gray(frame: np.ndarray) -> np.ndarray:
    cv2 = require("cv2")
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow [H, W, 2] from frame a to frame b (OpenCV Farneback, standard parameters)."""
    cv2 = require("cv2")
    return cv2.calcOpticalFlowFarneback(gray(a), gray(b), None, 0.5, 3, 15, 3, 5, 1.2, 0)


def top_mean(mag: np.ndarray, fraction: float) -> float:
    """Mean of the largest `fraction` of the values (VBench: top 2 % static filter, 5 % dynamic)."""
    v = np.sort(mag.ravel())[::-1]
    k = max(1, int(len(v) * fraction))
    return float(v[:k].mean())


def flow_magnitude(a, b) -> np.ndarray:
    f = farneback(a, b)
    return np.sqrt((f**2).sum(-1))


# -- exact rules: temporal flickering and the static filter ------------------------------------
def flicker_score(frames: np.ndarray) -> float:
    """(255 - mean_t MAE(frame_t, frame_t+1)) / 255 on all pixels and channels (VBench
    temporal_flickering.py, cv2.absdiff on float32)."""
    f = frames.astype(np.float32)
    maes = np.abs(f[1:] - f[:-1]).reshape(len(f) - 1, -1).mean(1)
    return float((255.0 - maes.mean()) / 255.0)


def static_filter(frames: np.ndarray, flow_fn=None) -> tuple[bool, list[float]]:
    """VBench static_filter.py with a replaceable flow: consecutive pairs plus (first, last) and
    (last, first); per pair the mean of the top 2 % flow magnitudes; thres = 3·min(H, W)/256,
    count_num = round(2·T/16). Static unless more than count_num consecutive pairs exceed thres, or
    a wrap-around pair exceeds thres·count_num·2."""
    flow_fn = flow_fn or (lambda a, b: top_mean(flow_magnitude(a, b), 0.02))
    t, h, w = frames.shape[:3]
    pairs = [(frames[i], frames[i + 1]) for i in range(t - 1)] + [(frames[0], frames[-1]), (frames[-1], frames[0])]
    mags = [flow_fn(a, b) for a, b in pairs]
    thres, count_num = 3 * min(h, w) / 256, round(2 * t / 16)
    moving = sum(m > thres for m in mags[:-2])
    static = not (moving > count_num or any(m > thres * count_num * 2 for m in mags[-2:]))
    return static, mags


# -- dynamic degree (RAFT in vbench_dynamic_degree, Farneback in the proxy), motion smoothness ------
def dynamic_frames(frames: np.ndarray, fps: float) -> np.ndarray:
    """The frames VBench's dynamic_degree.py scores: every max(1, round(fps/8))-th frame."""
    return frames[:: max(1, round(fps / 8))]


def dynamic_rule(pair_mags: list[float], h: int, w: int, n_frames: int, fps: float = 8.0) -> bool:
    """VBench dynamic_degree.py (set_params, check_move): dynamic when at least round(4·N/16) pairs
    (N sampled frames) have a top-5 % flow magnitude above max(1, 8/fps)·6·min(H, W)/256, fps being
    the video's own frame rate. As check_move counts inside its loop over the pairs, a video with no
    pair is never dynamic."""
    thres, count_num = max(1.0, 8.0 / fps) * 6 * min(h, w) / 256, round(4 * n_frames / 16)
    return bool(pair_mags) and sum(m > thres for m in pair_mags) >= count_num


def dynamic_degree_row(f: np.ndarray, fps: float, mags: list[float]) -> dict:
    """A video's dynamic_degree row from its sampled frames f and the per-pair top-5 % flow
    magnitudes `mags` (whichever flow computed them)."""
    dynamic = dynamic_rule(mags, f.shape[1], f.shape[2], len(f), fps)
    return {
        "value": float(dynamic),
        "dynamic": dynamic,
        "pairs": len(mags),
        "flow_top5pct_mean": round(sum(mags) / max(1, len(mags)), 4),
        "pair_scores": [round(float(m), 4) for m in mags],
    }


def interpolate_midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Frame halfway between a and b: warp both halfway along bidirectional Farneback flow and
    average (stands in for VBench's AMT-S interpolation network)."""
    cv2 = require("cv2")
    h, w = a.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    fab, fba = farneback(a, b), farneback(b, a)
    wa = cv2.remap(a, gx + 0.5 * fba[..., 0], gy + 0.5 * fba[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    wb = cv2.remap(b, gx + 0.5 * fab[..., 0], gy + 0.5 * fab[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return ((wa.astype(np.float32) + wb.astype(np.float32)) / 2).round().clip(0, 255).astype(np.uint8)


def motion_smoothness(frames: np.ndarray, interpolate=interpolate_midpoint) -> float:
    """VBench motion_smoothness.py: keep frames 0, 2, 4, ..., interpolate each midpoint, compare
    with the real odd frame: (255 - mean |interp - real|)/255 on uint8 RGB."""
    evens = frames[0::2]
    diffs = []
    for i in range(len(evens) - 1):
        mid = interpolate(evens[i], evens[i + 1]).astype(np.float32)
        diffs.append(np.abs(mid - frames[2 * i + 1].astype(np.float32)).mean())
    return float((255.0 - np.mean(diffs)) / 255.0)


# -- camera motion (VBench-I2V camera_motion.py rules) -----------------------------------------
CAMERA_TARGETS = {
    "camera pans left": "pan_left",
    "camera pans right": "pan_right",
    "camera tilts up": "tilt_up",
    "camera tilts down": "tilt_down",
    "camera zooms in": "zoom_in",
    "camera zooms out": "zoom_out",
    "camera static": "static",
}


def camera_target(prompt: str) -> str | None:
    for phrase, label in CAMERA_TARGETS.items():
        if phrase in prompt.lower():
            return label
    return None


def edge_directions(d: np.ndarray, thres: float) -> list[str]:
    """VBench-I2V camera_motion.py transform_class: a displacement (dx, dy) is right or left when
    |dx| > thres and down or up when |dy| > thres — both can hold — else static."""
    out = []
    if d[0] > thres:
        out.append("right")
    elif d[0] < -thres:
        out.append("left")
    if d[1] > thres:
        out.append("down")
    elif d[1] < -thres:
        out.append("up")
    return out or ["static"]


_PAN_TILT = {
    ("left", "left"): "pan_right",
    ("right", "right"): "pan_left",
    ("down", "down"): "tilt_up",
    ("up", "up"): "tilt_down",
    ("static", "static"): "static",
}
_TOP_BOTTOM = {**_PAN_TILT, ("up", "down"): "zoom_in", ("down", "up"): "zoom_out"}
_LEFT_RIGHT = {**_PAN_TILT, ("left", "right"): "zoom_in", ("right", "left"): "zoom_out"}


def camera_labels(first: np.ndarray, last: np.ndarray, h: int, w: int) -> set[str]:
    """VBench-I2V camera_motion.py (camera_classify) on a tracked grid: first/last [n, n, 2]
    positions (x, y), cast to integers as VBench does (`.long()`, towards zero). The middle points
    of the top and bottom rows and of the left and right columns move by a displacement each,
    classified by `edge_directions` with thres 0.005·min(H, W); every (top, bottom) pair of
    directions maps by pan/tilt (left,left→pan_right; right,right→pan_left; down,down→tilt_up;
    up,up→tilt_down), up,down→zoom_in, down,up→zoom_out, static,static→static; (left, right) pairs
    the same with left,right→zoom_in, right,left→zoom_out; an unmapped side gives "None". "static"
    is dropped when other labels remain, then "None" likewise."""
    disp = np.trunc(last) - np.trunc(first)
    n = first.shape[0]
    mid = math.ceil(n // 2 - 0.5)  # VBench's get_edge_point with one point per edge
    thres = 0.005 * min(h, w)
    top, bottom = edge_directions(disp[0, mid], thres), edge_directions(disp[n - 1, mid], thres)
    left, right = edge_directions(disp[mid, 0], thres), edge_directions(disp[mid, n - 1], thres)
    tb = [_TOP_BOTTOM[(a, b)] for a in top for b in bottom if (a, b) in _TOP_BOTTOM] or ["None"]
    lr = [_LEFT_RIGHT[(a, b)] for a in left for b in right if (a, b) in _LEFT_RIGHT] or ["None"]
    labels = set(tb + lr)
    for weak in ("static", "None"):
        if weak in labels and len(labels) > 1:
            labels.discard(weak)
    return labels


def grid_tracks_to_labels(pos: np.ndarray, grid: int, h: int, w: int) -> set[str]:
    """pos [T, grid², 2] (row-major grid, as CoTracker's grid queries and lk_track order them)."""
    return camera_labels(pos[0].reshape(grid, grid, 2), pos[-1].reshape(grid, grid, 2), h, w)


def lk_track(frames: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Track a grid x grid lattice of points through the video with pyramidal Lucas-Kanade
    (OpenCV), frame to frame. Returns positions [T, N, 2] and visibility [T, N] (LK status; a lost
    point stays lost)."""
    cv2 = require("cv2")
    t, h, w = frames.shape[:3]
    ys, xs = np.meshgrid(np.linspace(0, h - 1, grid + 2)[1:-1], np.linspace(0, w - 1, grid + 2)[1:-1], indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)[:, None]
    pos, vis = [pts[:, 0].copy()], [np.ones(len(pts), bool)]
    prev = gray(frames[0])
    for i in range(1, t):
        cur = gray(frames[i])
        nxt, status, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts, None, winSize=(15, 15), maxLevel=3)
        ok = (
            vis[-1]
            & (status[:, 0] == 1)
            & (nxt[:, 0, 0] >= 0)
            & (nxt[:, 0, 0] < w)
            & (nxt[:, 0, 1] >= 0)
            & (nxt[:, 0, 1] < h)
        )
        pts = np.where(ok[:, None, None], nxt, pts)
        pos.append(pts[:, 0].copy())
        vis.append(ok)
        prev = cur
    return np.stack(pos), np.stack(vis)


# -- consistency-style rules on backbone features (subject/background consistency, i2v) --------
def _cos(a, b) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def consistency_scores(feats: np.ndarray) -> list[float]:
    """subject_/background_consistency.py: frame i >= 1 scores
    (max(0, cos(f_i-1, f_i)) + max(0, cos(f_0, f_i)))/2. The dimension is frame-weighted."""
    prev = np.maximum(0, _cos(feats[:-1], feats[1:]))
    first = np.maximum(0, _cos(np.repeat(feats[:1], len(feats) - 1, 0), feats[1:]))
    return list((prev + first) / 2)


def i2v_score(image_feat: np.ndarray, feats: np.ndarray) -> float:
    """i2v_subject.py / i2v_background.py: 0.4·max_i max(0, cos(img, f_i)) + 0.3·mean and 0.3·min
    of max(0, cos(f_i-1, f_i))."""
    to_img = np.maximum(0, _cos(np.repeat(image_feat[None], len(feats), 0), feats))
    consec = np.maximum(0, _cos(feats[:-1], feats[1:]))
    return float(0.4 * to_img.max() + 0.3 * consec.mean() + 0.3 * consec.min())


def position_score(box_a, box_b, relation: str) -> float:
    """spatial_relationship.py get_position_score: boxes (x0, y0, x1, y1). If the centre offset's
    dominant axis matches the relation's axis (left/right: |dx| > |dy|; above/below: |dy| > |dx|):
    1 when IoU < 0.1, else 0.1/IoU; otherwise 0. Left and right are not told apart (VBench quirk)."""
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    dx, dy = abs(ax - bx), abs(ay - by)
    horizontal = "on the right of" in relation or "on the left of" in relation
    if (horizontal and dx > dy) or (not horizontal and dy > dx):
        ix = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
        iy = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
        inter = ix * iy
        union = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1]) + (box_b[2] - box_b[0]) * (box_b[3] - box_b[1]) - inter
        iou = inter / union if union > 0 else 0.0
        return 1.0 if iou < 0.1 else 0.1 / iou
    return 0.0


def scene_match(scene: str, caption: str) -> bool:
    """scene.py: every word of the scene label is a substring of the caption."""
    return all(word in caption for word in scene.split())


def human_action_correct(probs: np.ndarray, classes: list[str], label: str, k: int = 5, thres: float = 0.85) -> bool:
    """human_action.py: sigmoid probabilities; correct when a top-5 class with prob >= 0.85 is the label."""
    top = np.argsort(probs)[::-1][:k]
    return any(classes[i] == label and probs[i] >= thres for i in top)


def action_label(filename: str) -> str | None:
    """human_action: the text after "person is " and before "-" or "_"."""
    m = re.search(r"person is ([^-_]+)", filename)
    return m.group(1).strip() if m else None


# -- aggregation (scripts/constant.py, cal_final_score.py, cal_i2v_final_score.py) -------------
NORMALIZE = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
NORMALIZE_I2V = {"i2v_subject": (0.1462, 1.0), "i2v_background": (0.2615, 1.0), "camera_motion": (0.0, 1.0)}
WEIGHT = {d: (0.5 if d == "dynamic_degree" else 1.0) for d in NORMALIZE}
QUALITY = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
SEMANTIC = tuple(d for d in NORMALIZE if d not in QUALITY)
I2V_QUALITY = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
I2V_WEIGHT = {"camera_motion": 0.1, "i2v_subject": 1.0, "i2v_background": 1.0}


def normalized(dim: str, raw: float) -> float:
    """(raw - Min)/(Max - Min) · w, kept in [0, w]: VBench's Min/Max are the range its own models
    reached, and a value outside it (a proxy, a new model) would otherwise read as more than perfect
    (VBench's cal_final_score.py does not clamp; the record lists such dimensions: `outside_range`)."""
    lo, hi = NORMALIZE.get(dim) or NORMALIZE_I2V[dim]
    return min(max((raw - lo) / (hi - lo), 0.0), 1.0) * WEIGHT.get(dim, 1.0)


def outside_range(raw: dict[str, float]) -> list[str]:
    """Dimensions whose raw value lies outside VBench's normalisation range (clamped)."""
    out = []
    for dim, value in sorted(raw.items()):
        lo, hi = NORMALIZE.get(dim) or NORMALIZE_I2V.get(dim) or (value, value)
        if not lo <= value <= hi:
            out.append(dim)
    return out


def aggregate_scores(raw: dict[str, float]) -> dict[str, float]:
    """Quality = sum_Q norm / sum_Q w (6.5); Semantic = sum_S norm / 9; Total = (4Q + S)/5.
    I2V = (0.1·camera + i2v_subject + i2v_background)/2.1 (each normalised);
    I2V quality = (subject + background + smoothness + aesthetic + imaging + 0.5·dynamic)/5.5
    (temporal flickering is not in it); I2V total = (I2V quality + I2V)/2. Only complete groups."""
    out = {}
    if all(d in raw for d in QUALITY):
        out["quality_score"] = sum(normalized(d, raw[d]) for d in QUALITY) / sum(WEIGHT[d] for d in QUALITY)
    if all(d in raw for d in SEMANTIC):
        out["semantic_score"] = sum(normalized(d, raw[d]) for d in SEMANTIC) / len(SEMANTIC)
    if "quality_score" in out and "semantic_score" in out:
        out["total_score"] = (4 * out["quality_score"] + out["semantic_score"]) / 5
    if all(d in raw for d in I2V_WEIGHT):
        out["i2v_score"] = sum(I2V_WEIGHT[d] * normalized(d, raw[d]) for d in I2V_WEIGHT) / sum(I2V_WEIGHT.values())
    if all(d in raw for d in I2V_QUALITY):
        out["i2v_quality_score"] = sum(normalized(d, raw[d]) for d in I2V_QUALITY) / sum(WEIGHT[d] for d in I2V_QUALITY)
    if "i2v_score" in out and "i2v_quality_score" in out:
        out["i2v_total_score"] = (out["i2v_quality_score"] + out["i2v_score"]) / 2
    return out
