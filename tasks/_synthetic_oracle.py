"""A detector and captioner that is exact on the `synthetic_scenes` videos only: saturated pixels
(HSV), split by hue into the palette colours, connected components -> boxes; the shape from the
component's fill ratio (square ~1, disc ~pi/4, triangle ~1/2); the background from the grey level
of the unsaturated pixels. It stands in for GRiT / Tag2Text so the detection-based VBench rules run
end to end in tests and reference runs; its numbers are proxies (calibrated: false)."""

from __future__ import annotations

import numpy as np

from harness.synthetic_video import OBJECT_COLORS
from harness.video import require

SATURATION, VALUE, HUE_TOLERANCE, MIN_AREA = 120, 60, 7, 12


def _hues() -> dict[str, int]:
    cv2 = require("cv2")
    rgb = np.array([list(OBJECT_COLORS.values())], np.uint8)
    return dict(zip(OBJECT_COLORS, cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[0, :, 0].astype(int)))


def shape_of(fill: float) -> str:
    return "cube" if fill >= 0.88 else "sphere" if fill >= 0.6 else "pyramid"


def background_of(values: np.ndarray) -> str:
    """Flat dark / flat light / textured, from the V channel of the unsaturated pixels."""
    if values.size == 0 or values.std() > 5:
        return "textured wall"
    return "dark room" if np.median(values) < 100 else "white room"


def detect(frame: np.ndarray) -> dict:
    """{"dets": [{"class", "box" [x0, y0, x1, y1], "score", "caption"}], "caption"} for one uint8 RGB frame."""
    cv2 = require("cv2")
    hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV).astype(int)
    saturated = (hsv[..., 1] > SATURATION) & (hsv[..., 2] > VALUE)
    dets = []
    for color, hue in _hues().items():
        d = np.abs(hsv[..., 0] - hue)
        mask = saturated & (np.minimum(d, 180 - d) <= HUE_TOLERANCE)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        for x, y, w, h, area in stats[1:]:
            if area >= MIN_AREA:
                shape = shape_of(area / (w * h))
                dets.append(
                    {
                        "class": shape,
                        "box": [float(x), float(y), float(x + w), float(y + h)],
                        "score": 1.0,
                        "caption": f"{color} {shape}",
                    }
                )
    dets.sort(key=lambda d: (d["box"][0], d["box"][1]))
    where = background_of(hsv[..., 2][~saturated].astype(float))
    things = " and ".join(f"a {d['caption']}" for d in dets)
    place = f"in front of a {where}" if where == "textured wall" else f"in a {where}"
    return {"dets": dets, "caption": f"{things} {place}" if things else f"a {where}"}
