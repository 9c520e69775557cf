"""vbench_imaging_quality on pyiqa's MUSIQ (pyiqa 0.1.16, installed by make install with --no-deps):
on the same random weights, the task's path — the local checkpoint read and loaded strictly, VBench's
'longer' preprocessing, one frame at a time — gives the scores of pyiqa's own model; the network is
the SPAQ checkpoint's layout; wrong files and a missing pyiqa are refused with one clear error; the
task end to end."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pyiqa.archs import musiq_arch

from harness import params, records, runner
from harness.errors import UserError
from harness.tasks._weights import file_of
from harness.tasks.vbench_imaging_quality import VBenchImagingQuality, longer_512, musiq

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MUSIQ_FILE = file_of("musiq_spaq")


def test_task_path_gives_pyiqas_scores_on_the_same_weights(tmp_path):
    torch.manual_seed(0)
    ref = musiq_arch.MUSIQ(pretrained=False).eval()
    with torch.no_grad():  # trained-looking scale: the random head's outputs alone sit near 0
        ref.head.bias.fill_(50.0)
    torch.save({"params": ref.state_dict()}, tmp_path / MUSIQ_FILE)  # pyiqa's files nest the weights
    task = params.build(VBenchImagingQuality, {"weights_dir": str(tmp_path)}, "vbench_imaging_quality")
    task._net, facts = task.build()
    assert facts["calibrated"] and facts["weights"][0]["file"] == str(tmp_path / MUSIQ_FILE)
    # 2 frames of 40 x 520 (few patches: quick): the longer side is cut to 512 (VBench's 'longer'),
    # 39 x 512, then pyiqa's 3 scales
    frames = np.random.default_rng(1).integers(0, 256, (2, 40, 520, 3), dtype=np.uint8)
    frames[1] //= 2
    row = task.score(SimpleNamespace(prompt="", fps=8), frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(39, 512), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        want = ref(x / 255).flatten().tolist()  # pyiqa's forward on the batch: its own [0,1] -> [-1,1] and patches
    assert want[0] != pytest.approx(want[1], abs=1e-3)  # the frames score differently
    np.testing.assert_allclose(row["frame_scores"], want, atol=1e-3)  # rounded to 4 decimals in the row
    assert row["value"] == pytest.approx(np.mean(want), abs=1e-3)


def test_the_network_is_the_spaq_checkpoints_layout():
    state = musiq().state_dict()
    assert sum(v.numel() for v in state.values()) == 27_125_825  # the paper's "27M"
    assert state["head.weight"].shape == (1, 384)  # SPAQ's one-score head (AVA's would be 10 bins)
    assert state["transformer_encoder.posembed_input.position_emb"].shape == (1, 100, 384)  # 10 x 10 hash grid
    assert state["transformer_encoder.scaleembed_input.scale_emb"].shape == (3, 384)  # 224, 384, original
    assert len([k for k in state if k.endswith("attention.query.weight")]) == 14


def test_wrong_files_and_a_missing_pyiqa_are_user_errors(tmp_path, monkeypatch):
    task = params.build(VBenchImagingQuality, {"weights_dir": str(tmp_path)}, "vbench_imaging_quality")
    state = musiq().state_dict()
    torch.save({"params": {k: v for k, v in state.items() if k != "head.bias"}}, tmp_path / MUSIQ_FILE)
    with pytest.raises(UserError, match=r"does not match pyiqa's MUSIQ layout \(missing \['head.bias'\]"):
        task.build()
    (tmp_path / MUSIQ_FILE).write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        task.build()
    monkeypatch.setitem(sys.modules, "pyiqa.archs.musiq_arch", None)  # as if pyiqa were not installed
    with pytest.raises(UserError, match=r"pip install --no-deps pyiqa==0\.1\.16"):
        musiq()


def test_longer_side_preprocessing():
    assert longer_512(np.zeros((1, 600, 800, 3), np.uint8)).shape == (1, 3, 384, 512)
    x = longer_512(np.full((1, 300, 200, 3), 255, np.uint8))
    assert x.shape == (1, 3, 300, 200) and torch.all(x == 1)


def test_imaging_quality_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_VIDEO_WEIGHTS", str(tmp_path))
    src = {"motions": "static,pan_left", "per_motion": "1", "frames": "4", "size": "32"}
    with pytest.raises(UserError, match=MUSIQ_FILE):
        runner.evaluate(runner.resolve(["vbench_imaging_quality"], ["synthetic_videos"], None, {}, src), out=tmp_path)
    torch.manual_seed(0)
    torch.save({"params": musiq().state_dict()}, tmp_path / MUSIQ_FILE)
    (out,) = runner.evaluate(
        runner.resolve(["vbench_imaging_quality"], ["synthetic_videos"], None, {"num_frames": "2"}, src), out=tmp_path
    )
    rec = out.record
    assert (
        rec["provenance"]["calibrated"] is True and rec["details"]["weights"][0]["sha256_checked"] == "none published"
    )
    per_video = [s["value"] for s in records.read_samples(out.path)]
    assert rec["metrics"]["imaging_quality"]["value"] == pytest.approx(np.mean(per_video) / 100)
    assert all(len(s["frame_scores"]) == 2 for s in records.read_samples(out.path))
