"""FVD (Fréchet distance vs scipy, I3D weight loading, protocol), ChronoMagic CHScore and MTScore
formulas on mocked tracker / feature outputs, and --allow-uncalibrated."""

import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch

from harness import cli, runner
from harness.errors import UserError
from harness.tasks._frechet import frechet_distance, stats
from harness.tasks.chronomagic_chscore import MAXIMA, WEIGHTS, chscore
from harness.tasks.chronomagic_mtscore import metamorphic_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # I3D / ViT convolutions on a shared machine


def scipy_fd(a, b):
    m1, s1 = a.mean(0), np.cov(a, rowvar=False)
    m2, s2 = b.mean(0), np.cov(b, rowvar=False)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


@pytest.mark.parametrize("n,d", [(400, 16), (300, 64), (40, 64)])  # the last is rank-deficient (N < d)
def test_frechet_distance_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(d + n)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.2 + 0.5
    ours = frechet_distance(*stats(a), *stats(b))
    assert ours == pytest.approx(scipy_fd(a, b), rel=1e-6)
    mu, cov = stats(a)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-7 * np.trace(cov)  # round-off of tiny eigenvalues


@pytest.mark.parametrize("n,d", [(5, 400), (16, 400), (8, 64), (64, 32), (400, 16)])
def test_frechet_distance_of_identical_feature_sets_is_never_negative(n, d):
    """Identical sets: the distance is 0; round-off (here down to about -2e-3 unclamped for N < d) is
    clamped, never printed as a negative FVD."""
    feats = np.random.default_rng(n * d).normal(size=(n, d)) * 3
    mu, cov = stats(feats)
    value = frechet_distance(mu, cov, mu, cov)
    assert 0.0 <= value < 1e-7 * np.trace(cov)
    assert frechet_distance(*stats(feats), *stats(feats.copy())) >= 0.0


def test_frechet_distance_of_known_gaussians():
    """N(0, I) vs N(m, s²I) in d dims: ||m||² + d(1 - s)²."""
    d, s = 8, 2.0
    mu = np.arange(d, dtype=float)
    assert frechet_distance(np.zeros(d), np.eye(d), mu, s * s * np.eye(d)) == pytest.approx(mu @ mu + d * (1 - s) ** 2)


def fvd(tmp_path, task_args, source_args=None):
    args = {"resolution": "32", "num_frames": "16", **task_args}
    cells = runner.resolve(
        ["fvd"],
        ["synthetic_videos"],
        None,
        args,
        {"motions": "static,zoom_in", "per_motion": "2", "frames": "16", "size": "32", **(source_args or {})},
    )
    (out,) = runner.evaluate(cells, out=tmp_path, overwrite=True)
    return out.record


def test_fvd_refuses_without_weights_and_runs_uncalibrated(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_VIDEO_WEIGHTS", str(tmp_path / "none"))
    with pytest.raises(UserError, match="i3d_pretrained_400.pt.*--allow-uncalibrated"):
        fvd(tmp_path, {"reference": "same"})
    rec = fvd(tmp_path, {"reference": "same", "allow_uncalibrated": "true"})
    assert abs(rec["metrics"]["fvd"]["value"]) < 1e-6  # identical sets
    assert rec["provenance"]["calibrated"] is False
    cells = runner.resolve(
        ["fvd"],
        ["synthetic_videos"],
        None,
        {"resolution": "32", "reference": "synthetic", "allow_uncalibrated": "true"},
        {"motions": "static,pan_left", "per_motion": "2", "size": "32", "noise": "40"},
    )
    (other,) = runner.evaluate(cells, out=tmp_path, overwrite=True)
    assert other.record["metrics"]["fvd"]["value"] > 1e-3


def test_fvd_loads_a_local_state_dict_with_its_checksum(tmp_path, monkeypatch):
    from harness.backbones.i3d import InceptionI3d
    from harness.models import file_sha256

    weights = tmp_path / "w"
    weights.mkdir()
    torch.manual_seed(1)
    torch.save(InceptionI3d(400).state_dict(), weights / "i3d_pretrained_400.pt")
    sha = file_sha256(weights / "i3d_pretrained_400.pt")
    rec = fvd(tmp_path, {"reference": "same", "weights_dir": str(weights), "weights_sha256": sha})
    assert rec["provenance"]["calibrated"] is True and rec["details"]["weights_sha256"] == sha
    assert rec["details"]["protocol"] == "NON-STANDARD protocol"  # 32² here, 224² in the protocol
    with pytest.raises(UserError, match="sha256"):
        fvd(tmp_path, {"reference": "same", "weights_dir": str(weights), "weights_sha256": "0" * 64})
    torch.save({"wrong.weight": torch.zeros(1)}, weights / "i3d_pretrained_400.pt")
    with pytest.raises(UserError, match="InceptionI3d"):
        fvd(tmp_path, {"reference": "same", "weights_dir": str(weights)})


def test_i3d_parameter_layout():
    from harness.backbones.i3d import InceptionI3d

    keys = InceptionI3d(400).state_dict().keys()
    for k in (
        "Conv3d_1a_7x7.conv3d.weight",
        "Conv3d_1a_7x7.bn.running_mean",
        "Mixed_5c.b2b.conv3d.weight",
        "logits.conv3d.bias",
    ):
        assert k in keys
    assert sum(p.numel() for p in InceptionI3d(400).parameters()) == 12697264


def test_fvd_preprocess_protocol():
    from harness.tasks.fvd import preprocess

    frames = np.zeros((20, 48, 64, 3), np.uint8)
    frames[:, :, :, 0] = 255
    x = preprocess(frames, 16, 224)
    assert x.shape == (3, 16, 224, 224)  # squashed, not cropped
    assert float(x[0].min()) == pytest.approx(1.0) and float(x[1].max()) == pytest.approx(-1.0)


def test_chscore_formula_on_mocked_tracks():
    t, n = 10, 4
    pos = np.zeros((t, n, 2))
    pos[:, :, 0] = np.arange(t)[:, None]  # every point moves right
    vis = np.ones((t, n), bool)
    assert chscore(pos, vis)["CHScore"] == 0.0  # nothing missing: TSI 0 -> 0 (official)
    pos2 = pos.copy()
    pos2[6:, 0, 0] = -1.0  # point 0 lost and behind its start from frame 6
    vis[6:, 0] = False
    s = chscore(pos2, vis)
    miss = np.array([0] * 6 + [0.25] * 4)
    ap = np.abs(np.diff(miss))
    raw = {
        "AMPR": miss.mean(),
        "MPVR": ap.std(),
        "FCR": (ap > 0.1).sum() / t,
        "CMPV": (ap > 0.1).sum(),
        "MCMPV": ap.max(),
    }
    tsi = sum(WEIGHTS[k] * raw[k] / MAXIMA[k] for k in raw)
    assert s["TSI"] == pytest.approx(tsi) and s["CHScore"] == pytest.approx(1 / tsi)
    vis2 = np.ones((t, n), bool)
    vis2[6:, 0] = False  # lost but ahead in its own direction: excused
    assert chscore(pos, vis2)["CHScore"] == 0.0


def test_chscore_uses_cotracker_when_installed(tmp_path, monkeypatch):
    """The task builds CoTracker's predictor untrained (checkpoint=None, as torch.hub's cotracker2),
    loads the user's file into its network with the key check, and tracks on a grid of 30."""
    calls = {}
    saved = torch.nn.Linear(2, 2)  # the fake network's weights, written as the user's checkpoint

    class Predictor:
        def __init__(self, checkpoint=None, **kw):
            calls["checkpoint"] = checkpoint
            self.model = torch.nn.Linear(2, 2)

        def eval(self):
            calls["loaded"] = torch.equal(self.model.weight, saved.weight)
            return self

        def __call__(self, video, grid_size):
            t = video.shape[1]
            calls["grid"] = grid_size
            return torch.zeros(1, t, grid_size**2, 2), torch.ones(1, t, grid_size**2)

    pkg, mod = types.ModuleType("cotracker"), types.ModuleType("cotracker.predictor")
    mod.CoTrackerPredictor = Predictor
    monkeypatch.setitem(sys.modules, "cotracker", pkg)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", mod)
    torch.save(saved.state_dict(), tmp_path / "cotracker2.pth")
    cells = runner.resolve(
        ["chronomagic_chscore"],
        ["synthetic_videos"],
        None,
        {"weights_dir": str(tmp_path)},
        {"motions": "static", "per_motion": "1", "frames": "8", "size": "32"},
    )
    (out,) = runner.evaluate(cells, out=tmp_path / "out")
    assert calls == {"checkpoint": None, "loaded": True, "grid": 30}
    assert out.record["details"]["backend"] == "cotracker2" and out.record["provenance"]["calibrated"] is True


def test_chscore_lk_proxy_is_labelled(tmp_path):
    cells = runner.resolve(
        ["chronomagic_chscore"],
        ["synthetic_videos"],
        None,
        {"tracker": "lk", "grid": "6"},
        {"motions": "static,pan_left", "per_motion": "1", "frames": "8", "size": "32"},
    )
    (out,) = runner.evaluate(cells, out=tmp_path)
    assert (
        out.record["details"]["backend"] == "lucas-kanade (PROXY)" and out.record["provenance"]["calibrated"] is False
    )


def test_mtscore_aggregation_on_mocked_features(tmp_path):
    text = np.eye(10)
    video = np.zeros(10)
    video[[0, 5, 6]] = [0.02, 0.03, 0.01]  # similarities: general 0 at .02, metamorphic 5, 6 at .03, .01
    logits = 100 * video / np.linalg.norm(video)  # features are L2-normalised
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top5 = np.argsort(p)[::-1][:5]
    assert metamorphic_score(video, text) == pytest.approx(sum(p[i] for i in top5 if i >= 5))
    path = tmp_path / "f.npz"
    np.savez(path, ids=np.array(["static-0", "other"]), video_feats=np.stack([video, video]), text_feats=text)
    cells = runner.resolve(
        ["chronomagic_mtscore"],
        ["synthetic_videos"],
        None,
        {"features": str(path)},
        {"motions": "static", "per_motion": "1"},
    )
    (out,) = runner.evaluate(cells, out=tmp_path / "out")
    assert out.record["metrics"]["mtscore"]["value"] == pytest.approx(metamorphic_score(video, text))
    assert out.record["metrics"]["mtscore"]["n"] == 1  # "other" is not a video of the source
    with pytest.raises(UserError, match="InternVideo2"):
        runner.evaluate(runner.resolve(["chronomagic_mtscore"], ["synthetic_videos"], None, {}, {}), out=tmp_path)


def test_cli_allow_uncalibrated(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_VIDEO_WEIGHTS", str(tmp_path / "none"))
    base = [
        "eval",
        "--task",
        "fvd",
        "--method",
        "synthetic_videos",
        "--task-arg",
        "resolution=32",
        "--task-arg",
        "reference=same",
        "--method-arg",
        "motions=static,zoom_in",
        "--method-arg",
        "per_motion=2",
        "--method-arg",
        "size=32",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert cli.main(base) == 2
    assert "--allow-uncalibrated" in capsys.readouterr().err
    assert cli.main(base + ["--allow-uncalibrated"]) == 0
    assert (
        cli.main(
            [
                "eval",
                "--task",
                "vbench_temporal_flickering",
                "--method",
                "synthetic_videos",
                "--allow-uncalibrated",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "none of these tasks loads backbone weights" in capsys.readouterr().err
