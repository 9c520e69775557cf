"""VBench-I2V camera_motion: the rules (tasks/_vbench.py camera_labels) against a transcription of
VBench's CameraPredict on random tracks, the CoTracker2 task's refusal when co-tracker is not
installed (it is not on PyPI, so CI cannot install it: the CoTracker path itself is not run here).
The Lucas-Kanade fallback on synthetic camera motion: tests/test_vbench.py."""

import importlib.util
from math import ceil

import numpy as np
import pytest

from harness import runner
from harness.errors import UserError
from harness.tasks import _vbench as vb


def vbench_camera_classify(track1: np.ndarray, track2: np.ndarray, scale: int, grid: int = 10) -> set[str]:
    """vbench2_beta_i2v/camera_motion.py CameraPredict (get_edge_point, get_edge_direction,
    transform, transform_class, classify_top_down, classify_left_right, camera_classify) with one
    point per edge, transcribed; tracks [grid, grid, 2] already cast to integers."""

    def edge_points(track):
        middle, number = grid // 2, 1 / 2.0
        start, end = ceil(middle - number), ceil(middle + number)
        return (
            [list(track[0, i, :]) for i in range(start, end)],
            [list(track[grid - 1, i, :]) for i in range(start, end)],
            [list(track[i, 0, :]) for i in range(start, end)],
            [list(track[i, grid - 1, :]) for i in range(start, end)],
        )

    def transform_class(vector, min_reso, factor=0.005):
        s = min_reso * factor
        x, y = vector
        direction = []
        if x > s:
            direction.append("right")
        elif x < -s:
            direction.append("left")
        if y > s:
            direction.append("down")
        elif y < -s:
            direction.append("up")
        return direction if direction else ["static"]

    vectors = []
    for p1, p2 in zip(edge_points(track1), edge_points(track2)):
        v = [[e[0] - s[0], e[1] - s[1]] for s, e in zip(p1, p2)]
        vectors.append([np.mean([a[0] for a in v]), np.mean([a[1] for a in v])])
    top, down, left, right = [transform_class(v, scale) for v in vectors]
    common = {"left_left": "pan_right", "right_right": "pan_left", "down_down": "tilt_up", "up_up": "tilt_down"}
    tb = dict(common, up_down="zoom_in", down_up="zoom_out", static_static="static")
    lr = dict(common, left_right="zoom_in", right_left="zoom_out", static_static="static")
    top_results = [tb[f"{t}_{d}"] for t in top for d in down if f"{t}_{d}" in tb] or ["None"]
    left_results = [lr[f"{a}_{b}"] for a in left for b in right if f"{a}_{b}" in lr] or ["None"]
    results = list(set(top_results + left_results))
    if "static" in results and len(results) > 1:
        results.remove("static")
    if "None" in results and len(results) > 1:
        results.remove("None")
    return set(results)


def test_rules_match_vbench_on_random_tracks():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3000):
        h, w = rng.choice([64, 200, 480]), rng.choice([64, 320, 720])
        first = rng.uniform(0, min(h, w), (10, 10, 2))
        # displacements around the threshold 0.005·min(H, W), sometimes none, sometimes diagonal
        last = first + rng.choice([0.0, 0.5, 1.0, 3.0]) * rng.integers(-2, 3, (10, 10, 2))
        ours = vb.camera_labels(first, last, h, w)
        assert ours == vbench_camera_classify(np.trunc(first), np.trunc(last), min(h, w))
        seen |= ours
    assert seen >= {"pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "static", "None"}


def test_a_diagonal_edge_counts_in_both_directions():
    first = np.zeros((10, 10, 2))
    last = first.copy()
    last[0, 5] = last[-1, 5] = (3, 3)  # top and bottom move right and down
    assert vb.camera_labels(first, last, 64, 64) == {"pan_left", "tilt_up"}


@pytest.mark.skipif(importlib.util.find_spec("cotracker") is not None, reason="co-tracker is installed here")
def test_cotracker_task_without_the_package_names_the_install_and_the_fallback(tmp_path):
    cells = runner.resolve(["vbench_camera_motion"], ["synthetic_videos"], None, {}, {"motions": "pan_left"})
    with pytest.raises(UserError) as e:
        runner.evaluate(cells, out=tmp_path)
    msg = str(e.value)
    assert "not on PyPI" in msg and "git+https://github.com/facebookresearch/co-tracker.git" in msg
    assert "vbench_camera_motion_proxy" in msg
