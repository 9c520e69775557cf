"""MUSIQ in plain PyTorch (backbones/musiq.py) against pyiqa's layout and preprocessing rules: checkpoint
names and shapes, TF-SAME padding, weight standardisation, the hashed positions, the multi-scale token
counts, masking (padded tokens change nothing), and the imaging-quality task end to end."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from harness import records, runner
from harness.errors import UserError
from harness.backbones import musiq as mq
from harness.tasks.vbench_imaging_quality import longer_512

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_checkpoint_names_and_shapes_follow_pyiqa():
    net = mq.MUSIQ()
    state = net.state_dict()
    block = [
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ] + [f"attention.{m}.{p}" for m in ("query", "key", "value", "out") for p in ("weight", "bias")]
    want = (
        [
            "conv_root.weight",
            "gn_root.weight",
            "gn_root.bias",
            "embedding.weight",
            "embedding.bias",
            "head.weight",
            "head.bias",
            "transformer_encoder.cls",
            "transformer_encoder.encoder_norm.weight",
            "transformer_encoder.encoder_norm.bias",
            "transformer_encoder.posembed_input.position_emb",
            "transformer_encoder.scaleembed_input.scale_emb",
        ]
        + [f"block1.{c}.weight" for c in ("conv1", "conv2", "conv3", "conv_proj")]
        + [f"block1.{g}.{p}" for g in ("gn1", "gn2", "gn3", "gn_proj") for p in ("weight", "bias")]
        + [f"transformer_encoder.transformer.encoderblock_{i}.{b}" for i in range(14) for b in block]
    )
    assert sorted(state) == sorted(want)
    assert state["transformer_encoder.posembed_input.position_emb"].shape == (1, 100, 384)
    assert state["transformer_encoder.scaleembed_input.scale_emb"].shape == (3, 384)
    assert state["embedding.weight"].shape == (384, 256 * 8 * 8)
    assert sum(v.numel() for v in state.values()) == 27_125_825  # the paper's "27M"


def test_same_padding_weight_standardisation_and_hashing():
    x = torch.randn(1, 2, 37, 50)
    y = mq.same_pad(x, 7, 2)  # out = ceil(in / stride) for a VALID conv on the padded map
    assert F.conv2d(y, torch.ones(1, 2, 7, 7), stride=2).shape[-2:] == (math.ceil(37 / 2), math.ceil(50 / 2))
    # rows: (19 - 1)·2 + 7 - 37 = 6 -> 3 + 3; columns: (25 - 1)·2 + 7 - 50 = 5 -> 2 left, 3 right (TF)
    assert torch.equal(y[..., 3:40, 2:52], x) and y.shape[-2:] == (37 + 6, 50 + 5)
    conv = mq.StdConv(2, 4, 3, 1, bias=False)
    w = conv.weight.detach()
    w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True, unbiased=True) + 1e-5)
    assert torch.allclose(conv(x), F.conv2d(F.pad(x, (1, 1, 1, 1)), w), atol=1e-5)
    for n in (1, 3, 7, 10, 13, 24):  # nearest hashing: index floor(i · 10 / n)
        assert mq.hashed_positions(1, n).tolist() == [math.floor(i * 10 / n) for i in range(n)]
    assert mq.hashed_positions(2, 3).tolist() == [0, 3, 6, 50, 53, 56]


def test_multiscale_tokens_counts_and_masks():
    img = torch.rand(3, 48, 64)
    p, spatial, scale, mask = mq.multiscale_tokens(img)
    # 224: 168 x 224 -> 6 x 7 = 42 of 49; 384: 288 x 384 -> 9 x 12 = 108 of 144; original: 2 x 2 = 4
    assert p.shape == (49 + 144 + 4, 3 * 32 * 32)
    assert mask.tolist() == [True] * 42 + [False] * 7 + [True] * 108 + [False] * 36 + [True] * 4
    assert scale[mask].tolist() == [0] * 42 + [1] * 108 + [2] * 4 and not scale[~mask].any()
    assert not p[~mask].any() and not spatial[~mask].any()
    # TF SAME padding at every scale: 168 rows -> 6 patches, 24 rows of zeros split 12 / 12
    resized = F.interpolate(img[None], size=(168, 224), mode="bicubic", align_corners=False)[0]
    assert torch.allclose(
        p[1].reshape(3, 32, 32), F.pad(resized, (0, 0, 12, 12))[:, :32, 32:64]
    )  # row-major, (c, y, x)
    assert torch.allclose(p[-1].reshape(3, 32, 32), F.pad(img, (0, 0, 8, 8))[:, 32:64, 32:64])


def test_padded_tokens_do_not_change_the_score():
    """Attention logits between padded tokens are -1000 (pyiqa): the score equals the encoder's output
    on the unpadded tokens alone."""
    torch.manual_seed(0)
    net = mq.MUSIQ(layers=2).eval()
    img = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        full = net(img)
        p, spatial, scale, mask = mq.multiscale_tokens(img[0] * 2 - 1)
        keep = mask.nonzero()[:, 0]
        enc = net.transformer_encoder(
            net.tokens(p[keep])[None], spatial[keep][None], scale[keep][None], mask[keep][None]
        )
        assert torch.allclose(full, net.head(enc[:, 0])[:, 0], atol=1e-5)


def test_longer_side_preprocessing():
    assert longer_512(np.zeros((1, 600, 800, 3), np.uint8)).shape == (1, 3, 384, 512)
    x = longer_512(np.full((1, 300, 200, 3), 255, np.uint8))
    assert x.shape == (1, 3, 300, 200) and torch.all(x == 1)


def test_imaging_quality_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_VIDEO_WEIGHTS", str(tmp_path))
    src = {"motions": "static,pan_left", "per_motion": "1", "frames": "4", "size": "32"}
    with pytest.raises(UserError, match="musiq_spaq_ckpt-358bb6af.pth"):
        runner.evaluate(runner.resolve(["vbench_imaging_quality"], ["synthetic_videos"], None, {}, src), out=tmp_path)
    torch.manual_seed(0)
    torch.save({"params": mq.MUSIQ().state_dict()}, tmp_path / "musiq_spaq_ckpt-358bb6af.pth")
    (out,) = runner.evaluate(
        runner.resolve(["vbench_imaging_quality"], ["synthetic_videos"], None, {"num_frames": "2"}, src), out=tmp_path
    )
    rec = out.record
    assert rec["provenance"]["calibrated"] is True
    per_video = [s["value"] for s in records.read_samples(out.path)]
    assert rec["metrics"]["imaging_quality"]["value"] == pytest.approx(np.mean(per_video) / 100)
    assert all(len(s["frame_scores"]) == 2 for s in records.read_samples(out.path))
