"""Video input, the video sources, and per-file errors that leave the rest of a set scored."""

import json

import numpy as np
import pytest

from harness import records, runner
from harness.errors import UserError
from harness.synthetic_video import PROMPT, synthetic_video
from harness.video import middle_indices, prompt_from_filename, read_video, write_video


def test_middle_sampling_takes_interval_midpoints():
    # 16 frames in 4 intervals [0,4) [4,8) [8,12) [12,16): midpoints (0+3)//2, (4+7)//2, ...
    assert middle_indices(16, 4) == [1, 5, 9, 13]
    assert middle_indices(10, 3) == [1, 4, 7]  # bounds 0, 3, 6, 10
    assert middle_indices(5, 8) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", ["v.mp4", "v.webm", "v.gif", "frames"])
def test_formats_round_trip(tmp_path, name):
    v = synthetic_video("pan_right", frames=6, size=32, seed=3)
    back = read_video(write_video(tmp_path / name, v))
    assert back.shape == v.shape and back.dtype == np.uint8
    if name == "frames":
        assert np.array_equal(back, v)  # PNG frames are lossless
    else:  # gif is palettised, video codecs subsample chroma
        assert np.abs(back.astype(int) - v).mean() <= (40 if name == "v.gif" else 8)
    assert read_video(tmp_path / name, num_frames=3).shape[0] == 3


def test_unreadable_and_empty_files_are_named(tmp_path):
    bad = tmp_path / "broken-0.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(UserError, match="broken-0.mp4"):
        read_video(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="empty video .*empty"):
        read_video(empty)


def test_folder_source_scores_the_rest_and_lists_the_broken_file(tmp_path):
    write_video(tmp_path / f"{PROMPT['static']}-0.mp4", synthetic_video("static", 8, 32))
    write_video(tmp_path / f"{PROMPT['static']}-1.mp4", synthetic_video("static", 8, 32, seed=2))
    (tmp_path / "a cat-0.mp4").write_bytes(b"\x00" * 100)
    cells = runner.resolve(["vbench_temporal_flickering"], ["video_folder"], None, {}, {"path": str(tmp_path)})
    (out,) = runner.evaluate(cells, out=tmp_path / "out")
    assert out.record["metrics"]["temporal_flickering"]["n"] == 2
    (err,) = out.record["details"]["unreadable"]
    assert err["id"] == "a cat-0.mp4" and "a cat-0.mp4" in err["error"]
    samples = records.read_samples(out.path)
    assert {s["prompt"] for s in samples} == {PROMPT["static"]}


def test_a_set_of_only_broken_files_is_a_user_error(tmp_path):
    (tmp_path / "x-0.mp4").write_bytes(b"junk")
    cells = runner.resolve(["vbench_temporal_flickering"], ["video_folder"], None, {}, {"path": str(tmp_path)})
    with pytest.raises(UserError, match="no readable video.*x-0.mp4"):
        runner.evaluate(cells, out=tmp_path / "out")


def test_prompt_from_vbench_filename():
    assert prompt_from_filename("a dog running-3.mp4") == "a dog running"
    assert prompt_from_filename("camera pans left, a wall-12.webm") == "camera pans left, a wall"


def test_synthetic_export_in_vbench_format_reads_back(tmp_path):
    export = tmp_path / "suite"
    cells = runner.resolve(
        ["vbench_temporal_flickering"],
        ["synthetic_videos"],
        None,
        {"static_filter": "false"},
        {"motions": "static,pan_left", "per_motion": "2", "frames": "8", "size": "32", "export": str(export)},
    )
    runner.evaluate(cells, out=tmp_path / "out")
    names = sorted(p.name for p in export.glob("*.mp4"))
    assert names == sorted(f"{PROMPT[m]}-{i}.mp4" for m in ("static", "pan_left") for i in range(2))
    suite = json.loads((export / "full_info.json").read_text())
    assert {e["prompt_en"] for e in suite} == {PROMPT["static"], PROMPT["pan_left"]}
    assert all(set(e) == {"prompt_en", "dimension", "auxiliary_info"} for e in suite)
    cells = runner.resolve(
        ["vbench_temporal_flickering"], ["video_folder"], None, {"static_filter": "false"}, {"path": str(export)}
    )
    (out,) = runner.evaluate(cells, out=tmp_path / "out2")
    assert out.record["metrics"]["temporal_flickering"]["n"] == 4


def test_synthetic_controls_do_what_they_say():
    base = synthetic_video("static", 8, 32, seed=1)
    assert all(np.array_equal(base[0], f) for f in base)
    flick = synthetic_video("static", 8, 32, flicker=0.05, seed=1).astype(int)
    assert abs(flick[1].mean() - flick[0].mean()) == pytest.approx(0.1 * 255, abs=1.5)
    dropped = synthetic_video("pan_left", 16, 32, drop=0.5, seed=1)
    repeats = sum(np.array_equal(dropped[i], dropped[i + 1]) for i in range(15))
    assert 3 <= repeats <= 12
    with pytest.raises(ValueError, match="unknown motion"):
        synthetic_video("spin")
