"""The backbones of the VBench consistency dimensions — DINO ViT-B/16 from timm, CLIP ViT-B/32 from
open_clip: the released checkpoints' key names and shapes, DINO's own position interpolation against
a transcription of dino's interpolate_pos_encoding, the scoring on mocked backbone outputs, and the
weights / --allow-uncalibrated behaviour."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from harness import runner
from harness.errors import UserError
from harness.backbones._common import load_into
from harness.backbones.clip import clip_transform, load_clip
from harness.backbones.dino import dino_pos_embed, dino_transform, dino_vit
from harness.tasks.vbench_subject_consistency import VBenchSubjectConsistency

pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # ViT convolutions on a shared machine

# dino_vitbase16_pretrain.pth (facebookresearch/dino): a few entries of the released state dict
DINO_KEYS = {
    "cls_token": (1, 1, 768),
    "pos_embed": (1, 197, 768),
    "patch_embed.proj.weight": (768, 3, 16, 16),
    "patch_embed.proj.bias": (768,),
    "blocks.0.norm1.weight": (768,),
    "blocks.11.attn.qkv.weight": (2304, 768),
    "blocks.11.attn.qkv.bias": (2304,),
    "blocks.11.attn.proj.weight": (768, 768),
    "blocks.11.mlp.fc1.weight": (3072, 768),
    "blocks.11.mlp.fc2.weight": (768, 3072),
    "norm.bias": (768,),
}


def test_timm_dino_has_the_released_checkpoints_names_shapes_and_size():
    with torch.device("meta"):
        sd = dino_vit().state_dict()
    assert {k: tuple(sd[k].shape) for k in DINO_KEYS} == DINO_KEYS
    assert sum(v.numel() for v in sd.values()) == 85798656 and len(sd) == 150  # DINO ViT-B/16, no head


def dino_interpolate_pos_encoding(pos_embed, x_shape, patch):
    """facebookresearch/dino vision_transformer.py interpolate_pos_encoding, transcribed: it names
    the input's height w and its width h."""
    _, _, w, h = x_shape
    npatch = (w // patch) * (h // patch)
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def test_dino_position_interpolation_is_dinos_not_timms():
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    net = dino_vit(depth=1)
    pos = torch.randn(1, 197, 768)
    for shape in ((1, 3, 224, 298), (1, 3, 298, 224), (1, 3, 224, 230), (1, 3, 224, 224), (1, 3, 320, 320)):
        ref = dino_interpolate_pos_encoding(pos, shape, 16)
        assert torch.equal(dino_pos_embed(pos, *shape[2:], 16), ref), shape
    timm_way = resample_abs_pos_embed(pos, (14, 18), num_prefix_tokens=1)
    assert not torch.allclose(timm_way, dino_interpolate_pos_encoding(pos, (1, 3, 224, 298), 16), atol=1e-3)
    # the model adds exactly those positions: one block's input is the class token and patches + positions
    x = dino_transform(np.random.default_rng(0).integers(0, 255, (1, 120, 160, 3), dtype=np.uint8))
    assert x.shape == (1, 3, 224, 298)  # short side 224, no crop; long side truncated as torchvision
    seen = {}
    net.blocks[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    with torch.no_grad():
        out = net(x)
        tokens = net.patch_embed.proj(x).flatten(2).transpose(1, 2)
        ref = torch.cat([net.cls_token, tokens], 1) + dino_interpolate_pos_encoding(net.pos_embed, x.shape, 16)
    assert out.shape == (1, 768) and torch.allclose(seen["x"], ref, atol=1e-5)


def test_dino_and_clip_checkpoints_load_strictly(tmp_path):
    torch.manual_seed(3)
    src = dino_vit(depth=2)
    torch.save(src.state_dict(), tmp_path / "dino.pth")
    net = load_into(dino_vit(depth=2), tmp_path / "dino.pth", "", "t")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(net(x), src(x), atol=1e-6)
    torch.save({k: v for k, v in src.state_dict().items() if k != "norm.bias"}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="does not match"):
        load_into(dino_vit(depth=2), tmp_path / "bad.pth", "", "t")
    torch.jit.save(torch.jit.script(torch.nn.Sequential()), tmp_path / "bad.pt")  # a TorchScript archive
    from tests.test_clip_models import tiny_clip

    with pytest.raises(UserError, match="does not match"):
        load_clip(tiny_clip(), tmp_path / "bad.pt", "t", "visual")
    assert clip_transform(np.zeros((2, 240, 320, 3), np.uint8)).shape == (2, 3, 224, 224)


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
    torch.save(dino_vit().state_dict(), tmp_path / "dino_vitbase16_pretrain.pth")
    (out,) = runner.evaluate(
        runner.resolve(["vbench_subject_consistency"], ["synthetic_videos"], None, {"num_frames": "2"}, src),
        out=tmp_path,
    )
    assert out.record["provenance"]["calibrated"] is True and len(out.record["details"]["weights"][0]["sha256"]) == 64
    # a static video's frames are identical: every frame score is exactly 1 whatever the weights
    static = [s for s in __import__("harness.records", fromlist=["x"]).read_samples(out.path) if s["id"] == "static-0"]
    assert static[0]["value"] == pytest.approx(1.0)
