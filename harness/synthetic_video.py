"""Synthetic videos with known ground truth: a textured background seen by a camera that pans,
tilts or zooms, textured shapes moving over it, and controllable flicker, noise and frame drops.
The video tasks' tests use them as ground truth (a static video has no motion, a pan moves every
point by a known amount, flicker changes the mean brightness by a known amount)."""

from __future__ import annotations

import numpy as np

MOTIONS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shapes")
# VBench camera_motion prompts carry these phrases; the proxy parses them back from the prompt.
PROMPT = {
    "static": "camera static, a textured wall",
    "pan_left": "camera pans left over a textured wall",
    "pan_right": "camera pans right over a textured wall",
    "tilt_up": "camera tilts up over a textured wall",
    "tilt_down": "camera tilts down over a textured wall",
    "zoom_in": "camera zooms in on a textured wall",
    "zoom_out": "camera zooms out from a textured wall",
    "shapes": "colored shapes moving over a textured wall",
}


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour texture [size, size, 3] in 0..255 (sum of random sinusoids), rich in
    gradients so optical flow and point tracking lock on."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size, 3))
    for _ in range(12):
        fx, fy = rng.uniform(-0.25, 0.25, 2)
        phase = rng.uniform(0, 2 * np.pi)
        img += rng.uniform(0.3, 1.0, 3) * np.sin(2 * np.pi * (fx * x + fy * y) / 4 + phase)[..., None]
    img = (img - img.min()) / (img.max() - img.min())
    return 30 + 195 * img


def _sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear look-up of img at float coordinates (clamped)."""
    h, w = img.shape[:2]
    xs, ys = np.clip(xs, 0, w - 1.001), np.clip(ys, 0, h - 1.001)
    x0, y0 = xs.astype(int), ys.astype(int)
    ax, ay = (xs - x0)[..., None], (ys - y0)[..., None]
    return (1 - ay) * ((1 - ax) * img[y0, x0] + ax * img[y0, x0 + 1]) + ay * (
        (1 - ax) * img[y0 + 1, x0] + ax * img[y0 + 1, x0 + 1]
    )


def synthetic_video(
    motion: str = "static",
    frames: int = 16,
    size: int = 64,
    speed: float = 1.5,
    flicker: float = 0.0,
    noise: float = 0.0,
    drop: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """uint8 RGB [frames, size, size, 3].

    motion: one of MOTIONS ("pan_left" = the camera turns left, so the content moves right).
    speed: pixels per frame (pans, tilts, shapes) or the edge speed of a zoom.
    flicker: brightness alternates by ±flicker·255 between frames. noise: Gaussian pixel noise
    (std, 0..255 scale). drop: probability that a frame repeats the previous one (a dropped frame)."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    rng = np.random.default_rng(seed)
    margin = int(abs(speed) * frames) + 8
    big = texture(rng, size + 2 * margin)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2
    shapes = [
        (rng.uniform(8, size - 16, 2), rng.uniform(-1, 1, 2), rng.uniform(6, 12), texture(rng, 24)) for _ in range(3)
    ]
    out, prev = [], None
    for t in range(frames):
        dx = {"pan_left": -speed * t, "pan_right": speed * t}.get(motion, 0.0)
        dy = {"tilt_up": -speed * t, "tilt_down": speed * t}.get(motion, 0.0)
        z = {"zoom_in": 1 + speed * t / (size / 2), "zoom_out": 1 / (1 + speed * t / (size / 2))}.get(motion, 1.0)
        # camera at (dx, dy): the view's pixel (x, y) shows world point c + (x - c)/z + d
        img = _sample(big, margin + c + (x - c) / z + dx, margin + c + (y - c) / z + dy)
        if motion == "shapes":
            for pos, vel, r, tex in shapes:
                p = pos + vel * speed * t
                inside = (np.abs(x - p[0]) < r) & (np.abs(y - p[1]) < r)
                img[inside] = _sample(tex, (x - p[0] + 12)[inside], (y - p[1] + 12)[inside])
        img = img + (flicker * 255 if t % 2 else -flicker * 255)
        if noise:
            img = img + rng.normal(0, noise, img.shape)
        frame = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if prev is not None and drop and rng.random() < drop:
            frame = prev
        out.append(frame)
        prev = frame
    return np.stack(out)


# -- named, coloured objects (ground truth of the detection-based VBench dimensions) -----------------
# Saturated colours whose OpenCV hues are far apart, so an HSV threshold recovers each (the oracle in
# tasks/_synthetic_oracle.py); backgrounds are grey, so they never pass the saturation threshold.
OBJECT_COLORS = {
    "red": (220, 30, 30),
    "orange": (240, 140, 20),
    "yellow": (230, 220, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 220),
    "purple": (140, 40, 200),
}
SHAPES = ("cube", "sphere", "pyramid")  # drawn as square, disc, triangle
BACKGROUNDS = {"dark room": 40.0, "white room": 215.0, "textured wall": None}  # flat grey level, or texture


def _shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    if shape == "cube":
        return (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    if shape == "sphere":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "pyramid":  # apex up, base 2r wide at cy + r
        return (y <= cy + r) & (y >= cy - r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def object_video(
    objects: list[dict], background="textured wall", frames: int = 16, size: int = 64, seed: int = 0
) -> np.ndarray:
    """uint8 RGB [frames, size, size, 3] of flat-coloured shapes over a grey background.

    objects: dicts with shape (SHAPES), color (OBJECT_COLORS), x, y (centre at frame 0, pixels),
    r (half size), optional vx, vy (pixels per frame), frames (the frame indices where it is drawn;
    default all) and color_after (frame, colour): the colour changes from that frame on.
    background: a BACKGROUNDS name, or (name_before, name_after, frame) to switch mid-video."""
    rng = np.random.default_rng(seed)
    wall = texture(rng, size).mean(-1, keepdims=True).repeat(3, -1)  # grey: saturation 0
    out = []
    for t in range(frames):
        name = background if isinstance(background, str) else (background[0] if t < background[2] else background[1])
        level = BACKGROUNDS[name]
        img = wall.copy() if level is None else np.full((size, size, 3), level)
        for o in objects:
            if t not in o.get("frames", range(frames)):
                continue
            color = o["color"]
            if "color_after" in o and t >= o["color_after"][0]:
                color = o["color_after"][1]
            mask = _shape_mask(o["shape"], o["x"] + o.get("vx", 0.0) * t, o["y"] + o.get("vy", 0.0) * t, o["r"], size)
            img[mask] = OBJECT_COLORS[color]
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return np.stack(out)
