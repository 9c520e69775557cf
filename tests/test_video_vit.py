"""The plain-PyTorch video ViT (backbones/video_vit.py) against transformers' VideoMAE with the same
random weights mapped through `to_transformers`; checkpoint loading; UMT's position table; the
human-action task end to end with --allow-uncalibrated and with a saved tiny checkpoint."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from harness import runner
from harness.errors import UserError
from harness.backbones import video_vit as vv
from harness.tasks.vbench_human_action import read_classes, umt_transform, video_label
from harness.tasks._weights import file_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hf_config(c: vv.VideoViTConfig):
    """transformers' VideoMAE configuration with the shapes of ours."""
    transformers = pytest.importorskip("transformers")
    return transformers.VideoMAEConfig(
        image_size=c.image,
        patch_size=c.patch,
        num_frames=c.frames,
        tubelet_size=c.tubelet,
        hidden_size=c.dim,
        num_hidden_layers=c.depth,
        num_attention_heads=c.heads,
        intermediate_size=c.mlp_hidden,
        num_labels=c.num_classes,
        use_mean_pooling=True,
        qkv_bias=True,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )


def hf_twin(c: vv.VideoViTConfig, state: dict):
    transformers = pytest.importorskip("transformers")
    hf = transformers.VideoMAEForVideoClassification(hf_config(c)).eval()
    hf.fc_norm.eps = 1e-6  # transformers builds fc_norm with its default eps 1e-5
    missing, unexpected = hf.load_state_dict(vv.to_transformers(state), strict=False)
    assert not missing and not unexpected
    if c.position == "umt":  # transformers' table is a plain tensor: give it UMT's
        hf.videomae.embeddings.position_embeddings = state["pos_embed"].clone()
    return hf


@pytest.mark.parametrize("config", [vv.TINY, vv.TINY_UMT], ids=["videomae", "umt"])
def test_logits_and_features_match_transformers_videomae(config):
    torch.manual_seed(0)
    net = vv.VideoViT(config).eval()
    with torch.no_grad():  # non-trivial biases and norms (inits are zeros / ones)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf = hf_twin(config, net.state_dict())
    x = torch.randn(2, 3, config.frames, config.image, config.image)
    with torch.no_grad():
        logits = net(x)
        out = hf(pixel_values=x.permute(0, 2, 1, 3, 4), output_hidden_states=True)
        feats_hf = hf.fc_norm(out.hidden_states[-1].mean(1))
        assert torch.allclose(logits, out.logits, atol=1e-5, rtol=0)
        assert torch.allclose(net.forward_features(x), feats_hf, atol=1e-5, rtol=0)
        assert logits.std() > 0.05  # the comparison is not between two near-constant outputs


def test_sinusoid_table_equals_transformers_and_umt_stretches_time():
    pytest.importorskip("transformers")
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    assert torch.allclose(vv.sinusoid_table(392, 64), get_sinusoid_encoding_table(392, 64).float(), atol=1e-6)
    t = vv.umt_table(16, 2, 8)  # 8 checkpoint frames -> 16, linear, align_corners=False
    base = vv.sinusoid_table(8 * 4, 8).reshape(8, 4, 8)
    assert t.shape == (1, 64, 8)
    t = t.reshape(16, 4, 8)
    assert torch.allclose(t[0], base[0]) and torch.allclose(t[15], base[7])  # clamped ends
    assert torch.allclose(t[1], 0.75 * base[0] + 0.25 * base[1], atol=1e-6)  # source position 0.25


def test_official_layouts_and_checkpoint_loading(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from transformers.models.videomae import modeling_videomae

    # transformers builds its (non-parameter) position table in a Python loop: seconds at ViT-g size
    monkeypatch.setattr(modeling_videomae, "get_sinusoid_encoding_table", lambda n, d: torch.zeros(1, n, d))
    for c in (vv.VIDEOMAE_V2_G_SSV2, vv.UMT_L16_K400):  # full sizes, without allocating them
        with torch.device("meta"):
            ours = sum(p.numel() for p in vv.VideoViT(c).parameters())
            hf = transformers.VideoMAEForVideoClassification(hf_config(c))
        extra = 16 * 14 * 14 * c.dim if c.position == "umt" else 0  # UMT's position table is a parameter
        assert ours == sum(p.numel() for p in hf.parameters()) + extra
    torch.manual_seed(1)
    net = vv.VideoViT(vv.TINY)
    names = set(net.state_dict())
    assert "pos_embed" not in names and {"blocks.1.attn.q_bias", "fc_norm.weight", "head.bias"} <= names
    torch.save({"model": net.state_dict()}, tmp_path / "wrapped.pth")
    other = vv.VideoViT(vv.TINY)
    vv.load_video_vit(other, tmp_path / "wrapped.pth", "t")
    x = torch.randn(1, 3, 16, 32, 32)
    with torch.no_grad():
        assert torch.equal(other(x), net(x))
    bad = {k: v for k, v in net.state_dict().items() if k != "head.weight"}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="missing.*head.weight"):
        vv.load_video_vit(vv.VideoViT(vv.TINY), tmp_path / "bad.pth", "t")
    umt = vv.VideoViT(vv.TINY_UMT)  # UMT: a checkpoint without pos_embed keeps the table
    torch.save({k: v for k, v in umt.state_dict().items() if k != "pos_embed"}, tmp_path / "umt.pth")
    assert vv.load_video_vit(vv.VideoViT(vv.TINY_UMT), tmp_path / "umt.pth", "t", optional=("pos_embed",)) == {
        "missing_optional": ["pos_embed"]
    }


def test_preprocessing_matches_the_reference_recipes():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, 240, 320, 3), dtype=np.uint8)
    x = umt_transform(frames)  # short side 256 -> 256 x 341, centre 224 crop
    assert x.shape == (3, 16, 224, 224)
    import cv2

    ref = cv2.resize(frames[3], (341, 256), interpolation=cv2.INTER_LINEAR)[16:240, 58:282] / 255.0
    ref = (ref - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(x[:, 3].permute(1, 2, 0).numpy(), ref, atol=1e-5)
    u = vv.frames_to_unit(frames, 16, 224)  # cd-fvd: [0, 1], squashed to 224², no normalisation
    want = F.interpolate(
        torch.from_numpy(frames[:16]).permute(0, 3, 1, 2).float() / 255,
        size=(224, 224),
        mode="bilinear",
        align_corners=False,
    ).permute(1, 0, 2, 3)
    assert u.shape == (3, 16, 224, 224) and torch.allclose(u, want) and 0 <= u.min() and u.max() <= 1


def test_labels_and_class_file(tmp_path):
    from harness.video import VideoRef

    ref = VideoRef("x", "A person is riding a bike", None, path="/v/A person is riding a bike-3.mp4")
    assert video_label(ref) == "riding a bike"
    (tmp_path / "k.txt").write_text("".join(f"Class {i}\t{i}\n" for i in reversed(range(400))))
    assert read_classes(tmp_path / "k.txt")[:2] == ["class 0", "class 1"]
    (tmp_path / "short.txt").write_text("a\t0\n")
    with pytest.raises(UserError, match="400"):
        read_classes(tmp_path / "short.txt")


def test_human_action_end_to_end(tmp_path, monkeypatch):
    """Needs weights and the class list; --allow-uncalibrated tiny runs; with a planted head whose bias
    makes 'class 7' certain, videos labelled with that action are counted correct."""
    monkeypatch.setenv("HARNESS_VIDEO_WEIGHTS", str(tmp_path))
    src = {"motions": "static,pan_left", "per_motion": "1", "frames": "16", "size": "32"}
    with pytest.raises(UserError, match="l16_ptk710_ftk710_ftk400_f16_res224.pth"):
        runner.evaluate(runner.resolve(["vbench_human_action"], ["synthetic_videos"], None, {}, src), out=tmp_path)
    (out,) = runner.evaluate(
        runner.resolve(
            ["vbench_human_action"], ["synthetic_videos"], None, {"allow_uncalibrated": "true", "arch": "tiny"}, src
        ),
        out=tmp_path,
    )
    assert out.record["provenance"]["calibrated"] is False
    assert out.record["metrics"]["human_action"]["value"] == 0.0  # "class i" names never match

    from harness.tasks import vbench_human_action as ha

    monkeypatch.setattr(ha, "UMT_L16_K400", vv.TINY_UMT)  # the l16 code path on a tiny network
    torch.manual_seed(0)
    net = vv.VideoViT(vv.TINY_UMT)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(-20.0)
        net.head.bias[7] = 20.0
    torch.save(net.state_dict(), tmp_path / file_of("umt_l16_k400"))
    (tmp_path / file_of("kinetics400_classes")).write_text(
        "".join(f"{'Walking' if i == 7 else f'c{i}'}\t{i}\n" for i in range(400))
    )
    from harness.methods.video.synthetic import SyntheticVideos
    from harness.video import VideoRef

    clip = np.random.default_rng(0).integers(0, 255, (16, 40, 48, 3), dtype=np.uint8)
    monkeypatch.setattr(
        SyntheticVideos,
        "videos",
        lambda self, ctx: [
            VideoRef("a", "A person is walking", lambda n: clip, path="A person is walking-0.mp4"),
            VideoRef("b", "A person is dancing", lambda n: clip, path="A person is dancing-0.mp4"),
        ],
    )
    (out,) = runner.evaluate(
        runner.resolve(["vbench_human_action"], ["synthetic_videos"], None, {}, src), out=tmp_path, overwrite=True
    )
    rec = out.record
    assert rec["provenance"]["calibrated"] is True and rec["metrics"]["human_action"]["value"] == 0.5
    assert rec["details"]["pos_embed"] == "from the checkpoint"


def test_content_debiased_fvd(tmp_path, monkeypatch):
    """fvd features=videomae: refuses without the ViT-g file; with a checkpoint (the giant code path on
    a tiny network) the value equals the Fréchet distance of biased (÷N) float64 statistics of the
    network's forward_features on [0, 1] clips, recomputed here; identical sets give 0."""
    from harness.tasks._frechet import frechet_distance, stats
    from harness.methods.video.synthetic import SyntheticVideos

    monkeypatch.setenv("HARNESS_VIDEO_WEIGHTS", str(tmp_path))
    src = {"motions": "static,zoom_in,pan_left", "per_motion": "2", "frames": "16", "size": "32"}

    def run(args):
        (out,) = runner.evaluate(
            runner.resolve(["fvd"], ["synthetic_videos"], None, args, src), out=tmp_path, overwrite=True
        )
        return out.record

    with pytest.raises(UserError, match="vit_g_hybrid_pt_1200e_ssv2_ft.pth"):
        run({"features": "videomae"})
    rec = run(
        {"features": "videomae", "arch": "tiny", "allow_uncalibrated": "true", "reference": "same", "resolution": "32"}
    )
    assert abs(rec["metrics"]["fvd"]["value"]) < 1e-6 and rec["provenance"]["calibrated"] is False
    assert rec["details"]["covariance"] == "biased (÷N)"

    monkeypatch.setattr(vv, "VIDEOMAE_V2_G_SSV2", vv.TINY)
    torch.manual_seed(5)
    net = vv.VideoViT(vv.TINY).eval()
    torch.save({"module": net.state_dict()}, tmp_path / "vit_g_hybrid_pt_1200e_ssv2_ft.pth")
    rec = run({"features": "videomae", "reference": "synthetic", "resolution": "32"})
    assert rec["provenance"]["calibrated"] is True and rec["details"]["features"] == "videomae"

    class Ctx:
        seed = 0

    gen = SyntheticVideos(motions=("static", "zoom_in", "pan_left"), per_motion=2, frames=16, size=32)
    ref = SyntheticVideos(frames=16)
    ctx_ref = Ctx()
    ctx_ref.seed = 1
    with torch.no_grad():

        def feats(refs):
            return (
                net.forward_features(torch.stack([vv.frames_to_unit(r.load(None), 16, 32) for r in refs]))
                .double()
                .numpy()
            )

        g, r = feats(gen.videos(Ctx())), feats(ref.videos(ctx_ref))
    assert rec["metrics"]["fvd"]["value"] == pytest.approx(frechet_distance(*stats(r, True), *stats(g, True)), rel=1e-6)
    assert rec["metrics"]["fvd"]["value"] != pytest.approx(frechet_distance(*stats(r), *stats(g)), rel=1e-3)


@pytest.mark.slow
def test_full_size_umt_matches_transformers():
    """The real UMT ViT-L/16 configuration (16 x 224², 3136 tokens, 24 layers; random weights): about
    2.5 min and 3 GiB on a CPU. Measured: max |logit difference| 9.5e-7 for logits of std 0.85."""
    torch.manual_seed(0)
    c = vv.UMT_L16_K400
    net = vv.VideoViT(c).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf = hf_twin(c, net.state_dict())
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        assert torch.allclose(net(x), hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits, atol=1e-5, rtol=0)
