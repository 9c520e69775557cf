"""VBench: the exact rules (flickering, aggregation, scoring rules on mocked backbone outputs) and
the monotonicity of the weight-free dimensions on synthetic videos with known ground truth."""

import json

import numpy as np
import pytest

from harness import runner
from harness.errors import UserError
from harness.synthetic_video import synthetic_video
from harness.tasks import _vbench as vb


def run(task, source_args, task_args=None, tmp_path=None):
    cells = runner.resolve(
        [task], ["synthetic_videos"], None, task_args or {}, {"frames": "16", "size": "64", **source_args}
    )
    (out,) = runner.evaluate(cells, out=tmp_path)
    return out.record


def test_static_video_flickering_is_exactly_one(tmp_path):
    rec = run("vbench_temporal_flickering", {"motions": "static", "per_motion": "2"}, tmp_path=tmp_path)
    assert rec["metrics"]["temporal_flickering"]["value"] == 1.0
    assert rec["provenance"]["calibrated"] is True


def test_more_flicker_scores_lower(tmp_path):
    values = [
        run(
            "vbench_temporal_flickering", {"motions": "static", "per_motion": "1", "flicker": str(f)}, tmp_path=tmp_path
        )["metrics"]["temporal_flickering"]["value"]
        for f in (0.0, 0.01, 0.03, 0.08)
    ]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4
    # a static video whose brightness alternates by ±a·255 has MAE 2a·255 between every pair
    assert values[2] == pytest.approx(1 - 2 * 0.03, abs=0.005)


def test_flicker_formula_against_a_slow_loop():
    import cv2

    v = synthetic_video("pan_left", 6, 32, noise=5, seed=4)
    slow = np.mean([np.mean(cv2.absdiff(v[i].astype(np.float32), v[i + 1].astype(np.float32))) for i in range(5)])
    assert vb.flicker_score(v) == pytest.approx((255 - slow) / 255, rel=1e-6)


def test_static_filter_keeps_static_and_drops_moving_videos():
    assert vb.static_filter(synthetic_video("static", 16, 64))[0]
    assert not vb.static_filter(synthetic_video("pan_left", 16, 64, speed=3))[0]
    # rule on mocked flow: T=16 -> count_num 2, thres 0.75 at 64 px; 3 moving pairs -> not static
    mags = iter([1.0, 1.0, 1.0] + [0.0] * 12 + [0.0, 0.0])
    assert not vb.static_filter(np.zeros((16, 64, 64, 3), np.uint8), lambda a, b: next(mags))[0]
    mags = iter([1.0, 1.0] + [0.0] * 13 + [0.0, 0.0])
    assert vb.static_filter(np.zeros((16, 64, 64, 3), np.uint8), lambda a, b: next(mags))[0]


def test_dynamic_degree_proxy_static_false_fast_pan_true(tmp_path):
    rec = run("vbench_dynamic_degree_proxy", {"motions": "static", "per_motion": "1"}, tmp_path=tmp_path)
    assert rec["metrics"]["dynamic_degree"]["value"] == 0.0 and rec["provenance"]["calibrated"] is False
    rec = run(
        "vbench_dynamic_degree_proxy",
        {"motions": "pan_left,tilt_down", "per_motion": "1", "speed": "4"},
        tmp_path=tmp_path,
    )
    assert rec["metrics"]["dynamic_degree"]["value"] == 1.0
    assert vb.dynamic_rule([2.0] * 4 + [0.0] * 11, 64, 64, 16) and not vb.dynamic_rule(
        [2.0] * 3 + [0.0] * 12, 64, 64, 16
    )


def test_motion_smoothness_proxy_drops_with_frame_drops(tmp_path):
    smooth = run("vbench_motion_smoothness_proxy", {"motions": "pan_left", "per_motion": "2"}, tmp_path=tmp_path)
    jerky = run(
        "vbench_motion_smoothness_proxy", {"motions": "pan_left", "per_motion": "2", "drop": "0.5"}, tmp_path=tmp_path
    )
    assert smooth["metrics"]["motion_smoothness"]["value"] > jerky["metrics"]["motion_smoothness"]["value"]
    v = synthetic_video("static", 9, 32)
    assert vb.motion_smoothness(v) == pytest.approx(1.0, abs=1e-3)  # Farneback sees ~0 flow
    # the formula with a linear blend as the interpolator, checked by hand on a ramp of frames
    ramp = np.stack([np.full((4, 4, 3), 10 * i, np.uint8) for i in range(5)])
    blend = lambda a, b: ((a.astype(int) + b) // 2).astype(np.uint8)
    assert vb.motion_smoothness(ramp, blend) == 1.0
    ramp[1] += 6  # real frame 1 is 6 off the midpoint of frames 0 and 2: MAE 6 over 2 midpoints -> 3
    assert vb.motion_smoothness(ramp, blend) == pytest.approx((255 - 3) / 255)


def test_camera_motion_proxy_recovers_every_synthetic_camera_motion(tmp_path):
    motions = "static,pan_left,pan_right,tilt_up,tilt_down,zoom_in,zoom_out"
    rec = run("vbench_camera_motion_proxy", {"motions": motions, "per_motion": "1"}, tmp_path=tmp_path)
    assert rec["metrics"]["camera_motion"]["value"] == 1.0 and rec["metrics"]["camera_motion"]["n"] == 7
    assert rec["details"]["backend"].startswith("Lucas-Kanade")  # the record names the fallback that scored it


@pytest.mark.parametrize(
    "top,bottom,left,right,expected",
    [
        ((-3, 0), (-3, 0), (-3, 0), (-3, 0), {"pan_right"}),  # content moves left: the camera pans right
        ((0, 3), (0, 3), (0, 3), (0, 3), {"tilt_up"}),
        ((0, -3), (0, 3), (-3, 0), (3, 0), {"zoom_in"}),  # edges move outwards
        ((0, 3), (0, -3), (3, 0), (-3, 0), {"zoom_out"}),
        ((0, 0.1), (0, 0), (0, 0), (0.1, 0), {"static"}),  # below 0.005·min(H, W) = 0.32
        ((-3, 0), (-3, 0), (0, 0), (0, 0), {"pan_right"}),  # static is dropped next to another label
    ],
)
def test_camera_rules_on_mocked_tracks(top, bottom, left, right, expected):
    first = np.zeros((10, 10, 2))
    last = first.copy()
    last[0, 5], last[-1, 5], last[5, 0], last[5, -1] = top, bottom, left, right
    assert vb.camera_labels(first, last, 64, 64) == expected


def test_consistency_and_i2v_rules_on_mocked_features():
    f = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    s = 2**-0.5
    # frame 1: (cos(f0,f1) + cos(f0,f1))/2; frame 2: (cos(f1,f2) + max(0, cos(f0,f2)))/2; frame 3: (0 + 0)/2
    assert vb.consistency_scores(f) == pytest.approx([s, s / 2, 0.0])
    img = np.array([1.0, 0.0])
    consec = [s, s, 0.0]
    assert vb.i2v_score(img, f) == pytest.approx(0.4 * 1.0 + 0.3 * np.mean(consec) + 0.3 * 0.0)


def test_spatial_scene_action_rules():
    a, b = (0, 0, 10, 10), (20, 0, 30, 10)
    assert vb.position_score(a, b, "on the left of") == 1.0
    assert vb.position_score(a, b, "on the right of") == 1.0  # VBench does not tell left from right
    assert vb.position_score(a, b, "on the top of") == 0.0
    c = (5, 0, 15, 10)  # IoU 50/150 = 1/3, centres 10 apart in x
    assert vb.position_score(a, c, "on the left of") == pytest.approx(0.1 / (1 / 3))
    assert vb.scene_match("living room", "a sofa in a cosy living room") and not vb.scene_match("alley", "a street")
    probs = np.array([0.9, 0.1, 0.86, 0.2, 0.3, 0.95])
    classes = ["running", "a", "dancing", "b", "c", "d"]
    assert vb.human_action_correct(probs, classes, "running") and vb.human_action_correct(probs, classes, "dancing")
    assert not vb.human_action_correct(probs, classes, "a")  # in the top 5 but below 0.85
    assert vb.action_label("A person is riding a bike-0.mp4") == "riding a bike"


HAND = {
    "subject_consistency": 0.95,
    "background_consistency": 0.96,
    "temporal_flickering": 0.97,
    "motion_smoothness": 0.98,
    "dynamic_degree": 0.6,
    "aesthetic_quality": 0.6,
    "imaging_quality": 0.65,
    "object_class": 0.9,
    "multiple_objects": 0.5,
    "human_action": 0.9,
    "color": 0.85,
    "spatial_relationship": 0.6,
    "scene": 0.5,
    "appearance_style": 0.22,
    "temporal_style": 0.24,
    "overall_consistency": 0.27,
    "i2v_subject": 0.97,
    "i2v_background": 0.98,
    "camera_motion": 0.4,
}


def test_aggregation_against_hand_computed_values():
    quality = (
        (0.95 - 0.1462) / (1 - 0.1462)
        + (0.96 - 0.2615) / (1 - 0.2615)
        + (0.97 - 0.6293) / (1 - 0.6293)
        + (0.98 - 0.706) / (0.9975 - 0.706)
        + 0.5 * 0.6
        + 0.6
        + 0.65
    ) / 6.5
    semantic = (
        0.9 + 0.5 + 0.9 + 0.85 + 0.6 + 0.5 / 0.8222 + (0.22 - 0.0009) / (0.2855 - 0.0009) + 0.24 / 0.364 + 0.27 / 0.364
    ) / 9
    i2v = (0.1 * 0.4 + (0.97 - 0.1462) / (1 - 0.1462) + (0.98 - 0.2615) / (1 - 0.2615)) / 2.1
    i2v_quality = (
        (0.95 - 0.1462) / (1 - 0.1462)
        + (0.96 - 0.2615) / (1 - 0.2615)
        + (0.98 - 0.706) / (0.9975 - 0.706)
        + 0.6
        + 0.65
        + 0.5 * 0.6
    ) / 5.5
    got = vb.aggregate_scores(HAND)
    assert got["quality_score"] == pytest.approx(quality, rel=1e-12)
    assert got["semantic_score"] == pytest.approx(semantic, rel=1e-12)
    assert got["total_score"] == pytest.approx((4 * quality + semantic) / 5, rel=1e-12)
    assert got["i2v_score"] == pytest.approx(i2v, rel=1e-12)
    assert got["i2v_quality_score"] == pytest.approx(i2v_quality, rel=1e-12)
    assert got["i2v_total_score"] == pytest.approx((i2v_quality + i2v) / 2, rel=1e-12)
    assert "total_score" not in vb.aggregate_scores({k: v for k, v in HAND.items() if k != "scene"})


def test_vbench_task_reads_eval_results_and_adds_flickering(tmp_path):
    scores = {k: [v, []] for k, v in HAND.items() if k != "temporal_flickering"}  # VBench's format
    path = tmp_path / "model_eval_results.json"
    path.write_text(json.dumps(scores))
    rec = run("vbench", {"motions": "static", "per_motion": "1"}, {"scores": str(path)}, tmp_path / "out")
    m = rec["metrics"]
    assert m["raw@temporal_flickering"]["value"] == 1.0  # computed on the static video
    assert m["total_score"]["value"] == pytest.approx(
        vb.aggregate_scores(dict(HAND, temporal_flickering=1.0))["total_score"]
    )
    assert m["coverage"]["value"] == 1.0 and rec["provenance"]["calibrated"] is True
    path.write_text(json.dumps({"smell": 0.5}))
    with pytest.raises(UserError, match="unknown dimension 'smell'"):
        run("vbench", {"motions": "static", "per_motion": "1"}, {"scores": str(path)}, tmp_path / "out2")


def test_vbench_with_proxies_is_marked_uncalibrated(tmp_path):
    rec = run("vbench", {"motions": "static,pan_left", "per_motion": "1"}, {"proxies": "true"}, tmp_path)
    assert rec["provenance"]["calibrated"] is False
    assert rec["details"]["sources"]["dynamic_degree"] == "computed (PROXY: Farneback flow instead of RAFT)"


def test_official_adapter_runs_the_package_in_another_interpreter(tmp_path, fake_vbench_python, synthetic_video_folder):
    """The adapter hands a VBench-named folder to the other environment's vbench and reads its
    `<name>_eval_results.json` back; with a stand-in package computing flickering, the value equals
    this project's own temporal_flickering on the same files."""
    args = {"python": fake_vbench_python, "dimension": "temporal_flickering"}
    cells = runner.resolve(["vbench_official"], ["video_folder"], None, args, {"path": synthetic_video_folder})
    (out,) = runner.evaluate(cells, out=tmp_path)
    ours = runner.evaluate(
        runner.resolve(
            ["vbench_temporal_flickering"],
            ["video_folder"],
            None,
            {"static_filter": "false"},
            {"path": synthetic_video_folder},
        ),
        out=tmp_path,
    )
    assert out.record["metrics"]["score"]["value"] == pytest.approx(
        ours[0].record["metrics"]["temporal_flickering"]["value"]
    )
    assert out.record["details"]["backend"] == "official vbench 0.0-fake"


@pytest.mark.parametrize(
    "case,problem", [("missing", "does not exist"), ("folder", "is a folder"), ("not_executable", "is not executable")]
)
def test_official_adapter_refuses_a_python_that_is_no_executable_file(tmp_path, synthetic_video_folder, case, problem):
    """Only an executable regular file is an interpreter: a missing path (under tmp_path, so certainly
    absent), a folder or a plain file is a one-line UserError (exit 2), never a PermissionError."""
    python = tmp_path / "env" / "bin" / "python"
    if case == "folder":
        python.mkdir(parents=True)
    elif case == "not_executable":
        python.parent.mkdir(parents=True)
        python.write_text("#!/bin/sh\n")
        python.chmod(0o644)
    cells = runner.resolve(
        ["vbench_official"], ["video_folder"], None, {"python": str(python)}, {"path": synthetic_video_folder}
    )
    with pytest.raises(UserError, match="HARNESS_VBENCH_PYTHON") as e:
        runner.evaluate(cells, out=tmp_path / "out")
    assert f"python={python} {problem}" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.json"))


def test_a_source_whose_videos_were_never_read_fails_its_effect_check(tmp_path):
    from harness.errors import NoEffect

    path = tmp_path / "scores.json"
    path.write_text(json.dumps(HAND))
    cells = runner.resolve(["vbench"], ["synthetic_videos"], None, {"scores": str(path), "compute": "false"}, {})
    with pytest.raises(NoEffect, match="no readable video"):
        runner.evaluate(cells, out=tmp_path / "out")


def test_normalised_values_stay_in_range_and_the_aggregate_shows_its_counts(tmp_path):
    """A proxy above VBench's Max normalises to 1, not more, and the record names the dimension; the
    aggregate's unit lists its dimensions and each raw value says over how many videos."""
    assert vb.normalized("motion_smoothness", 0.9999) == 1.0 and vb.normalized("motion_smoothness", 0.5) == 0.0
    assert vb.outside_range({"motion_smoothness": 0.9999, "temporal_flickering": 0.9}) == ["motion_smoothness"]
    rec = run("vbench", {"motions": "static,pan_left", "per_motion": "2"}, {"proxies": "true"}, tmp_path)
    m, d = rec["metrics"], rec["details"]
    assert all(0 <= v["value"] <= 1 for k, v in m.items() if k.startswith("norm@"))
    assert d["videos"]["read"] == 4 and d["videos"]["static"] == 2
    assert m["raw@temporal_flickering"]["n"] == 2 and d["videos"]["scored"]["dynamic_degree"] == 4
    assert "3 of 16: dynamic_degree, motion_smoothness, temporal_flickering" in m["available_score"]["unit"]
