"""The plain-PyTorch backbones of the VBench consistency dimensions: checkpoint layouts, the scoring
on mocked backbone outputs, and the weights / --allow-uncalibrated behaviour."""

import numpy as np
import pytest
import torch

from harness import runner
from harness.errors import UserError
from harness.backbones._common import load_into
from harness.backbones.clip import CLIP_B32, ClipVisual, clip_transform
from harness.backbones.dino import DinoViT, dino_transform
from harness.tasks.vbench_subject_consistency import VBenchSubjectConsistency

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # I3D / ViT convolutions on a shared machine


def test_parameter_counts_and_names_match_the_released_models():
    dino, clip = DinoViT(), ClipVisual(**CLIP_B32)
    assert sum(p.numel() for p in dino.parameters()) == 85798656  # DINO ViT-B/16
    assert sum(p.numel() for p in clip.parameters()) == 87849216  # CLIP ViT-B/32 visual tower
    assert {"blocks.11.attn.qkv.weight", "norm.bias", "pos_embed"} <= set(dino.state_dict())
    assert {"transformer.resblocks.11.attn.in_proj_weight", "ln_post.weight", "proj"} <= set(clip.state_dict())


def test_clip_checkpoint_with_visual_prefix_and_torchscript_loads(tmp_path):
    torch.manual_seed(3)
    src = ClipVisual(**CLIP_B32)
    torch.save(
        {f"visual.{k}": v for k, v in src.state_dict().items()} | {"token_embedding.weight": torch.zeros(2)},
        tmp_path / "ViT-B-32.pt",
    )
    net = load_into(ClipVisual(**CLIP_B32), tmp_path / "ViT-B-32.pt", "visual.", "t")
    x = clip_transform(np.random.default_rng(0).integers(0, 255, (2, 240, 320, 3), dtype=np.uint8))
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(net(x), src(x), atol=1e-5)
    torch.jit.save(torch.jit.script(torch.nn.Sequential()), tmp_path / "bad.pt")
    with pytest.raises(UserError, match="does not match"):
        load_into(ClipVisual(**CLIP_B32), tmp_path / "bad.pt", "visual.", "t")


def test_dino_transform_keeps_aspect_and_interpolates_positions():
    x = dino_transform(np.zeros((1, 120, 160, 3), np.uint8))
    assert x.shape == (1, 3, 224, 298)  # short side 224, no crop; long side truncated as torchvision
    with torch.no_grad():
        assert DinoViT(depth=1)(x[..., :288]).shape == (1, 768)


def test_subject_consistency_frame_weighting_on_mocked_features(tmp_path, monkeypatch):
    """Two videos of 3 and 5 frames whose 'backbone' returns fixed features: the dimension is the
    mean over all 2 + 4 frame scores, not the mean of the two video means."""
    feats = {3: np.array([[1.0, 0], [1, 0], [0, 1]]), 5: np.array([[1.0, 0], [1, 0], [1, 0], [1, 0], [1, 0]])}
    monkeypatch.setattr(VBenchSubjectConsistency, "build", lambda self: (None, {"calibrated": True, "weights": []}))
    monkeypatch.setattr(VBenchSubjectConsistency, "embed", lambda self, x: feats[x.shape[0]])
    from harness.methods.video.synthetic import SyntheticVideos
    from harness.video import VideoRef

    monkeypatch.setattr(
        SyntheticVideos,
        "videos",
        lambda self, ctx: [
            VideoRef("a", "p", lambda n: np.zeros((3, 32, 32, 3), np.uint8)),
            VideoRef("b", "p", lambda n: np.zeros((5, 32, 32, 3), np.uint8)),
        ],
    )
    (out,) = runner.evaluate(
        runner.resolve(["vbench_subject_consistency"], ["synthetic_videos"], None, {}, {}), out=tmp_path
    )
    a = [1.0, 0.0]  # frame 2: cos(f1,f2) = 0 and cos(f0,f2) = 0
    b = [1.0] * 4
    m = out.record["metrics"]
    assert m["subject_consistency"]["value"] == pytest.approx(np.mean(a + b))
    assert m["per_video"]["value"] == pytest.approx((np.mean(a) + np.mean(b)) / 2)


def test_backbone_tasks_need_weights_or_the_uncalibrated_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_VIDEO_WEIGHTS", str(tmp_path))
    src = {"motions": "static,pan_left", "per_motion": "1", "frames": "4", "size": "32"}
    with pytest.raises(UserError, match="dino_vitbase16_pretrain.pth"):
        runner.evaluate(
            runner.resolve(["vbench_subject_consistency"], ["synthetic_videos"], None, {}, src), out=tmp_path
        )
    (out,) = runner.evaluate(
        runner.resolve(
            ["vbench_background_consistency"], ["synthetic_videos"], None, {"allow_uncalibrated": "true"}, src
        ),
        out=tmp_path,
    )
    assert out.record["provenance"]["calibrated"] is False
    assert out.record["details"]["weights"] == [{"file": None, "sha256": None}]
    torch.manual_seed(0)
    torch.save(DinoViT().state_dict(), tmp_path / "dino_vitbase16_pretrain.pth")
    (out,) = runner.evaluate(
        runner.resolve(["vbench_subject_consistency"], ["synthetic_videos"], None, {"num_frames": "2"}, src),
        out=tmp_path,
    )
    assert out.record["provenance"]["calibrated"] is True and len(out.record["details"]["weights"][0]["sha256"]) == 64
    # a static video's frames are identical: every frame score is exactly 1 whatever the weights
    static = [s for s in __import__("harness.records", fromlist=["x"]).read_samples(out.path) if s["id"] == "static-0"]
    assert static[0]["value"] == pytest.approx(1.0)
