"""vbench_dynamic_degree on torchvision's RAFT and its Farneback fallback (vbench_dynamic_degree_proxy).

No RAFT weights can be fetched here, so the RAFT path is checked on a random-init RAFT-large saved
under the released file's name and key names: the task loads that file, and on the flows that
network returns it computes exactly what a line-by-line transcription of VBench's
DynamicDegree.infer computes. Whether RAFT's flow points the right way and ranks motions as the
fallback does needs the real raft-things weights: that check runs when
raft_large_C_T_V1-22a6c225.pth is in $HARNESS_VIDEO_WEIGHTS and is skipped otherwise. The fallback
is checked against the known motion of synthetic videos."""

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from harness import params, runner
from harness.errors import UserError
from harness.models import file_sha256
from harness.synthetic_video import synthetic_video
from harness.tasks import _vbench as vb
from harness.tasks._weights import file_of
from harness.tasks.vbench_dynamic_degree import VBenchDynamicDegree, raft_large, raft_pair_scores

RAFT_FILE = file_of("raft_large_things")

optical_flow = pytest.importorskip("torchvision.models.optical_flow")


def vbench_infer(model, video: np.ndarray, fps: float, iters: int):
    """VBench's DynamicDegree (vbench/dynamic_degree.py) step by step, with torchvision's RAFT as
    `self.model`: get_frames keeps every max(1, round(fps/8))-th frame as a [1, 3, H, W] float tensor
    in 0..255; set_params(frames[0], len(frames), fps); each consecutive pair goes through
    InputPadder('sintel').pad and the model; get_score on the padded flow; check_move. The original
    RAFT maps its inputs to [-1, 1] in its forward; torchvision's leaves that to the caller, so this
    does it just before the call."""
    frames = [torch.from_numpy(f.astype(np.uint8)).permute(2, 0, 1).float()[None] for f in video]
    interval = max(1, round(fps / 8))
    frames = [frames[i] for i in range(0, len(frames), interval)]
    factor = max(1.0, 8.0 / fps)
    scale = min(list(frames[0].shape)[-2:])
    thres, count_num = factor * 6.0 * (scale / 256.0), round(4 * (len(frames) / 16.0))
    scores = []
    for image1, image2 in zip(frames[:-1], frames[1:]):
        ht, wd = image1.shape[-2:]
        pad_ht, pad_wd = (((ht // 8) + 1) * 8 - ht) % 8, (((wd // 8) + 1) * 8 - wd) % 8
        pad = [pad_wd // 2, pad_wd - pad_wd // 2, pad_ht // 2, pad_ht - pad_ht // 2]
        image1, image2 = F.pad(image1, pad, mode="replicate"), F.pad(image2, pad, mode="replicate")
        with torch.no_grad():
            flow_up = model(2 * (image1 / 255.0) - 1.0, 2 * (image2 / 255.0) - 1.0, num_flow_updates=iters)[-1]
        flo = flow_up[0].permute(1, 2, 0).numpy()
        rad = np.sqrt(np.square(flo[:, :, 0]) + np.square(flo[:, :, 1]))
        h, w = rad.shape
        cut_index = int(h * w * 0.05)
        scores.append(np.mean(abs(np.sort(-rad.flatten()))[:cut_index]).item())
    count = 0
    for score in scores:
        if score > thres:
            count += 1
        if count >= count_num:
            return True, scores
    return False, scores


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random RAFT-large saved as the released file (torchvision's key names), and the network."""
    torch.manual_seed(3)
    net = raft_large().eval()
    folder = tmp_path_factory.mktemp("weights")
    torch.save(net.state_dict(), folder / RAFT_FILE)
    return folder, net


def task(folder, **kw):
    """The task on `folder`; a file there is vouched for with weights_sha256 (its random weights do not
    carry torchvision's published sha256 prefix, which the task checks otherwise)."""
    sha = {"weights_sha256": file_sha256(folder / RAFT_FILE)} if (folder / RAFT_FILE).is_file() else {}
    return params.build(VBenchDynamicDegree, {"weights_dir": str(folder), **sha, **kw}, "vbench_dynamic_degree")


@pytest.mark.parametrize("fps,shape", [(8, (128, 136)), (24, (125, 130)), (4, (131, 150))])
def test_raft_path_computes_what_vbench_computes_on_the_same_flows(weights, fps, shape):
    folder, net = weights
    t = task(folder, iters="2")
    t._net, facts = t.build()
    assert facts["calibrated"] and facts["weights"][0]["sha256"] == file_sha256(folder / RAFT_FILE)
    loaded = dict(t._net.state_dict())
    assert loaded.keys() == net.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    for motion in ("static", "pan_left"):
        video = synthetic_video(motion, 5, 152, speed=2.0, seed=1)[:, : shape[0], : shape[1]]
        row = t.score(SimpleNamespace(fps=fps, prompt=""), video)
        dynamic, scores = vbench_infer(net, video, fps, 2)
        assert row["pairs"] == len(scores) == len(vb.dynamic_frames(video, fps)) - 1
        np.testing.assert_allclose(row["pair_scores"], scores, rtol=1e-4, atol=1e-4)
        assert row["dynamic"] == dynamic


def test_rule_edges_match_check_move():
    # T = 16 sampled frames at 64 px: count_num 4, thres 1.5 (8 fps), 3.0 at 4 fps (VBench's 8/fps factor)
    assert vb.dynamic_rule([2.0] * 4 + [0.0] * 11, 64, 64, 16)
    assert not vb.dynamic_rule([2.0] * 4 + [0.0] * 11, 64, 64, 16, fps=4)
    assert not vb.dynamic_rule([], 64, 64, 1)  # check_move's loop never runs: not dynamic
    assert vb.dynamic_rule([0.0], 64, 64, 2)  # count_num = round(0.5) = 0: any pair makes it dynamic


def test_batched_pairs_equal_one_pair_at_a_time(weights):
    _, net = weights
    video = synthetic_video("pan_right", 4, 128, speed=2.0, seed=2)
    one = [raft_pair_scores(net, video[i : i + 2], iters=2)[0] for i in range(3)]
    np.testing.assert_allclose(raft_pair_scores(net, video, iters=2, batch=2), one, rtol=1e-4)


def test_wrong_checkpoint_and_missing_weights_are_user_errors(tmp_path):
    torch.save(optical_flow.raft_small(weights=None).state_dict(), tmp_path / RAFT_FILE)
    with pytest.raises(UserError, match="does not match"):
        task(tmp_path).build()
    with pytest.raises(UserError, match=f"{RAFT_FILE}.*vbench_dynamic_degree_proxy"):
        task(tmp_path / "empty").build()


def test_aggregate_records_which_backend_scored_dynamic_degree(tmp_path):
    cells = runner.resolve(
        ["vbench"],
        ["synthetic_videos"],
        None,
        {"proxies": "true", "dimensions": "dynamic_degree", "allow_uncalibrated": "true"},
        {"frames": "3", "size": "64", "motions": "static,pan_left", "per_motion": "1"},
    )
    (out,) = runner.evaluate(cells, out=tmp_path)
    src = out.record["details"]["sources"]
    assert src["dynamic_degree"].startswith("computed by vbench_dynamic_degree (RAFT-large from torchvision")
    assert "UNCALIBRATED" in src["dynamic_degree"] and "PROXY" in src["motion_smoothness"]
    assert out.record["provenance"]["calibrated"] is False


def test_fallback_follows_the_known_motion():
    """Farneback's per-pair top-5 % magnitude on synthetic camera motion: ~0 when static, close to
    the pan speed, growing with it, and large at the edges of a zoom; the rule then calls static
    videos static and fast ones dynamic (64 px: thres 1.5 px)."""

    def pairs(motion, speed):
        v = synthetic_video(motion, 9, 64, speed=speed, seed=5)
        return [vb.top_mean(vb.flow_magnitude(v[i], v[i + 1]), 0.05) for i in range(8)]

    static = pairs("static", 1.0)
    pans = {s: np.median(pairs("pan_left", s)) for s in (0.5, 1.0, 2.0, 3.0)}
    assert max(static) < 0.1
    assert list(pans.values()) == sorted(pans.values())
    assert all(abs(m - s) < 0.35 * s + 0.1 for s, m in pans.items())
    assert np.median(pairs("zoom_in", 1.5)) > 0.5
    assert not vb.dynamic_rule(static, 64, 64, 9) and vb.dynamic_rule(pairs("tilt_down", 3.0), 64, 64, 9)


REAL = Path(os.environ.get("HARNESS_VIDEO_WEIGHTS", "~/.cache/harness/video")).expanduser() / RAFT_FILE


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_file(), reason=f"needs the real RAFT weights {REAL}")
def test_raft_with_real_weights_agrees_with_the_fallback_on_known_motion():
    """With raft-things: RAFT's flow points the way the content moves (a camera panning left moves
    the content right, +x), its per-pair magnitude is close to the pan speed, and RAFT and Farneback
    make the same static/dynamic call on static, slow and fast videos."""
    net = VBenchDynamicDegree(weights_dir=str(REAL.parent)).build()[0]
    video = synthetic_video("pan_left", 3, 128, speed=2.0, seed=5)
    x = 2 * (torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255) - 1
    with torch.no_grad():
        flow = net(x[:1], x[1:2], num_flow_updates=20)[-1][0]
    assert flow[0, 32:96, 32:96].mean() == pytest.approx(2.0, abs=0.4) and abs(flow[1, 32:96, 32:96].mean()) < 0.4
    for motion, speed in (("static", 1.0), ("pan_left", 0.3), ("pan_left", 5.0), ("zoom_out", 6.0)):
        v = synthetic_video(motion, 9, 128, speed=speed, seed=6)
        raft = raft_pair_scores(net, v)
        farneback = [vb.top_mean(vb.flow_magnitude(v[i], v[i + 1]), 0.05) for i in range(8)]
        assert vb.dynamic_rule(raft, 128, 128, 9) == vb.dynamic_rule(farneback, 128, 128, 9), (motion, speed)
