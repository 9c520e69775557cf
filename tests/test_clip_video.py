"""The CLIP-family VBench dimensions: CLIP's tokenizer and towers against transformers, ViCLIP
against a slow loop reference, the scoring rules on mocked backbone outputs (hand-computed), and
the --allow-uncalibrated end to end run."""

import gzip
import json
import math

import numpy as np
import pytest
import torch

from harness import records, registry, runner
from harness.cli import main
from harness.errors import UserError
from harness.methods.video.synthetic import SyntheticVideos
from harness.tasks import _clip_text as ct
from harness.tasks import _viclip as vc
from harness.tasks._clip_tasks import pil_resize_crop
from harness.video import VideoRef, middle_indices

pytestmark = pytest.mark.usefixtures("one_torch_thread")
registry.load()


# -- (b) tokenizer ---------------------------------------------------------------------------------
TEXTS = [
    "a photo of a cat",
    "Hello, World! it's 2024",
    "café  über   naïve",
    "x²+y³ = z½ ...!!",
    "Iñtërnâtiônàlizætiøn 日本語 emoji 🎉🎉",
    "don't stop'n'roll ''s",
    "A  B\tC\nD",
    "e\u0301 cafe\u0301",
    "a <|endoftext|> b",
    "The camera pans left, Van Gogh style",
]


def test_tokenizer_matches_transformers_cliptokenizer_on_the_same_vocabulary():
    from transformers import CLIPTokenizer

    ours = ct.tokenizer()
    lines = gzip.open(ct.BPE_FILE).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    peer = CLIPTokenizer(vocab=dict(ours.encoder), merges=[tuple(m.split()) for m in lines])
    for text in TEXTS:
        ids = ours(text)[0]
        assert ids[: int((ids != 0).sum())].tolist() == peer(text)["input_ids"], text


def test_tokenizer_hand_checked_ids_cleaning_and_truncation():
    tok = ct.tokenizer()
    # OpenAI CLIP's well-known ids: <|startoftext|> a photo of a cat <|endoftext|>, zero padding to 77
    ids = tok("A  photo of a CAT")
    assert ids.shape == (1, 77) and ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].eq(0).all()
    assert tok.encode("&amp;amp;") == tok.encode("&")  # html.unescape twice
    assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat "
    long = " ".join(["cat"] * 80)
    with pytest.raises(UserError, match="longer than CLIP's context"):
        tok(long)
    cut = tok(long, context_length=32, truncate=True)[0]  # ViCLIP: last id becomes end-of-text
    assert cut.tolist() == [49406] + [2368] * 30 + [49407]


# -- (a) CLIP towers against transformers' CLIPModel ------------------------------------------------
VIS = dict(patch=32, width=64, layers=2, heads=4, out=48)
TXT = dict(width=32, layers=2, heads=4, out=48, context=77, vocab=1000)


def openai_to_hf(sd: dict, layers_text: int, layers_vision: int) -> dict:
    """OpenAI/open_clip key layout -> transformers CLIPModel (as its convert_clip_original script)."""
    out = {
        "logit_scale": sd["logit_scale"],
        "text_projection.weight": sd["text_projection"].t(),
        "visual_projection.weight": sd["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for q in ("weight", "bias"):
            out[f"vision_model.{theirs}.{q}"] = sd[f"visual.{ours}.{q}"]
    for src, dst, n in (("", "text_model", layers_text), ("visual.", "vision_model", layers_vision)):
        for i in range(n):
            a, b = f"{src}transformer.resblocks.{i}.", f"{dst}.encoder.layers.{i}."
            for q in ("weight", "bias"):
                for name, w in zip("qkv", sd[a + f"attn.in_proj_{q}"].chunk(3)):
                    out[b + f"self_attn.{name}_proj.{q}"] = w
                for s, d in (
                    ("attn.out_proj", "self_attn.out_proj"),
                    ("ln_1", "layer_norm1"),
                    ("ln_2", "layer_norm2"),
                    ("mlp.c_fc", "mlp.fc1"),
                    ("mlp.c_proj", "mlp.fc2"),
                ):
                    out[b + f"{d}.{q}"] = sd[a + f"{s}.{q}"]
    return out


def test_clip_image_and_text_towers_match_transformers_clipmodel():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    src = ct.Clip(VIS, TXT)
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.1)
    with torch.no_grad():
        src.logit_scale.fill_(2.0)
    # the checkpoint in OpenAI's layout (text tower at top level), with the ints its TorchScript keeps
    sd = {(k[5:] if k.startswith("text.") else k): v for k, v in src.state_dict().items()}
    ckpt = {f"module.{k}": v for k, v in sd.items()} | {
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(1000),
    }
    net = ct.Clip(VIS, TXT).load_checkpoint(ckpt, "t", "ckpt").eval()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            eos_token_id=999,
            bos_token_id=998,
            pad_token_id=0,
            projection_dim=48,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            patch_size=32,
            hidden_act="quick_gelu",
            projection_dim=48,
        ),
        projection_dim=48,
    )
    hf = CLIPModel(cfg).eval()
    missing, unexpected = hf.load_state_dict(openai_to_hf(sd, 2, 2), strict=False)
    assert not missing and not unexpected
    ids = torch.zeros(3, 77, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    for row, n in enumerate((5, 9, 3)):  # sot, random ids, eot (the largest id), padding
        ids[row, 0], ids[row, n - 1] = 998, 999
        ids[row, 1 : n - 1] = torch.randint(1, 990, (n - 2,), generator=g)
    images = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        per_image, per_text = net(images, ids)
        ref = hf(input_ids=ids, pixel_values=images)
    assert torch.allclose(per_image, ref.logits_per_image, atol=1e-5)
    assert torch.allclose(per_text, ref.logits_per_text, atol=1e-5)
    assert per_image.abs().max() > 0.1  # not a degenerate comparison
    with pytest.raises(UserError, match="does not match the CLIP layout"):
        ct.Clip(VIS, TXT).load_checkpoint({"visual.conv1.weight": sd["visual.conv1.weight"]}, "t", "bad")


# -- (d) ViCLIP against a slow reference ------------------------------------------------------------
TINY_V = dict(patch=8, width=16, layers=2, heads=2, out=12, frames=8, resolution=32)
TINY_T = dict(width=16, layers=1, heads=2, out=12, context=32, vocab=49408)


def slow_block(x, blk, heads):
    """One CLIP residual block on [N, D] tokens, attention head by head with explicit softmax."""

    def ln(v, m):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(
            v.var(-1, unbiased=False, keepdim=True) + m.eps
        ) * m.weight + m.bias

    d = x.shape[1]
    h = ln(x, blk.ln_1)
    q, k, v = (h @ blk.attn.in_proj_weight.t() + blk.attn.in_proj_bias).split(d, -1)
    dh = d // heads
    outs = []
    for i in range(heads):
        s = slice(i * dh, (i + 1) * dh)
        w = torch.softmax(q[:, s] @ k[:, s].t() / math.sqrt(dh), -1)
        outs.append(w @ v[:, s])
    x = x + torch.cat(outs, -1) @ blk.attn.out_proj.weight.t() + blk.attn.out_proj.bias
    m = ln(x, blk.ln_2) @ blk.mlp.c_fc.weight.t() + blk.mlp.c_fc.bias
    return x + (m * torch.sigmoid(1.702 * m)) @ blk.mlp.c_proj.weight.t() + blk.mlp.c_proj.bias


def slow_viclip_video(net: vc.ViClipVision, video: torch.Tensor, heads: int) -> torch.Tensor:
    """video [T, 3, H, W]: every patch of every frame embedded one by one, + spatial position (1 + n)
    + temporal position t, in (n, t) order after one class token (class_embedding + position 0)."""
    t, _, hh, ww = video.shape
    p = net.conv1.weight.shape[-1]
    w2d = net.conv1.weight[:, :, 0]
    temporal = net.temporal_positional_embedding[0]
    temporal = temporal.mean(0, keepdim=True).expand(t, -1) if t == 1 else temporal
    tokens = [net.class_embedding + net.positional_embedding[0]]
    for n in range((hh // p) * (ww // p)):
        r, c = divmod(n, ww // p)
        for f in range(t):
            patch = video[f, :, r * p : (r + 1) * p, c * p : (c + 1) * p]
            tokens.append((w2d * patch).sum((1, 2, 3)) + net.positional_embedding[1 + n] + temporal[f])
    x = torch.nn.functional.layer_norm(torch.stack(tokens), (tokens[0].shape[0],), net.ln_pre.weight, net.ln_pre.bias)
    for blk in net.transformer.resblocks:
        x = slow_block(x, blk, heads)
    return net.ln_post(x[0]) @ net.proj


def test_viclip_vision_matches_slow_space_time_reference_and_loads_the_release_layout(tmp_path):
    torch.manual_seed(0)
    net = vc.ViClip(TINY_V, TINY_T).eval()
    with torch.no_grad():
        net.vision_encoder.temporal_positional_embedding.normal_()  # released weights are non-zero
        video = torch.randn(2, 8, 3, 32, 32)
        fast = net.encode_vision(video)
        one = net.encode_vision(video[:1, :1])  # single-frame path
        for b in range(2):
            assert torch.allclose(fast[b], slow_viclip_video(net.vision_encoder, video[b], 2), atol=1e-5)
        assert torch.allclose(one[0], slow_viclip_video(net.vision_encoder, video[0, :1], 2), atol=1e-5)
        # the temporal embedding makes frame order matter (space-time attention alone would not)
        assert not torch.allclose(net.encode_vision(video[:1].flip(1)), fast[:1], atol=1e-4)
    # VBench: torch.load(path)["model"] with vision_encoder.*, text_encoder.*, temp, loaded strictly
    torch.save({"model": net.state_dict()}, tmp_path / "viclip.pth")
    loaded = vc.load_viclip(tmp_path / "viclip.pth", "t", TINY_V, TINY_T).eval()
    ids = ct.tokenizer()(["a cat", "a dog running"], context_length=32, truncate=True)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_vision(video), fast, atol=1e-6)
        assert torch.allclose(loaded.encode_text(ids), net.encode_text(ids), atol=1e-6)
    assert {"vision_encoder.temporal_positional_embedding", "text_encoder.text_projection", "temp"} <= set(
        net.state_dict()
    )
    torch.save({"model": {"temp": net.temp}}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="does not match"):
        vc.load_viclip(tmp_path / "bad.pth", "t", TINY_V, TINY_T)


def test_viclip_l14_parameter_layout():
    with torch.device("meta"):
        vision = vc.ViClipVision(**vc.VICLIP_L14)
    assert vision.conv1.weight.shape == (1024, 3, 1, 14, 14) and vision.conv1.bias is None
    assert vision.positional_embedding.shape == (257, 1024)
    assert vision.temporal_positional_embedding.shape == (1, 8, 1024) and vision.proj.shape == (1024, 768)
    assert len(vision.transformer.resblocks) == 24


# -- (c) scoring on mocked backbone outputs ---------------------------------------------------------
def two_videos(monkeypatch, lengths=(3, 5), prompts=("p a", "p b"), image=None):
    def frames(n, t, i):  # a source samples "middle" as read_video does
        return np.full((t, 32, 40, 3), 40 * (i + 1), np.uint8)[middle_indices(t, n) if n else slice(None)]

    refs = [
        VideoRef(
            f"v{i}",
            prompts[i],
            lambda n, t=t, i=i: frames(n, t, i),
            meta={} if image is None else {"condition_image": lambda: image},
        )
        for i, t in enumerate(lengths)
    ]
    monkeypatch.setattr(SyntheticVideos, "videos", lambda self, ctx: refs)


def evaluate(task, tmp_path, **args):
    (out,) = runner.evaluate(
        runner.resolve([task], ["synthetic_videos"], None, {k: str(v) for k, v in args.items()}, {}), out=tmp_path
    )
    return out.record, records.read_samples(out.path)


def no_backbone(monkeypatch, cls, net=None):
    """The task's own build() runs (argument checks, suites); the network is `net`."""
    monkeypatch.setattr(cls, "backbone", lambda self, files, make: (net, {"calibrated": True, "weights": []}))


def test_aesthetic_quality_is_the_mean_over_videos_of_mean_score_over_10(tmp_path, monkeypatch):
    from harness.tasks.vbench_aesthetic_quality import VBenchAestheticQuality

    two_videos(monkeypatch)
    scores = {3: np.array([5.0, 6.0, 7.0]), 5: np.array([2.0, 2.0, 4.0, 4.0, 8.0])}
    no_backbone(monkeypatch, VBenchAestheticQuality)
    monkeypatch.setattr(VBenchAestheticQuality, "embed", lambda self, x: scores[x.shape[0]])
    rec, rows = evaluate("vbench_aesthetic_quality", tmp_path)
    assert [r["value"] for r in rows] == pytest.approx([0.6, 0.4])
    assert rec["metrics"]["aesthetic_quality"]["value"] == pytest.approx(0.5)  # not frame-weighted (0.475)


def test_appearance_style_frame_weighted_with_style_from_suite(tmp_path, monkeypatch):
    from harness.tasks.vbench_appearance_style import VBenchAppearanceStyle

    two_videos(monkeypatch, prompts=("a beach, Van Gogh style", "a city"))
    suite = tmp_path / "full_info.json"
    suite.write_text(
        json.dumps(
            [
                {
                    "prompt_en": "a beach, Van Gogh style",
                    "dimension": ["appearance_style"],
                    "auxiliary_info": {"appearance_style": {"appearance_style": "Van Gogh style"}},
                },
                {
                    "prompt_en": "a city",
                    "dimension": ["appearance_style"],
                    "auxiliary_info": {"appearance_style": {"appearance_style": "pixel art"}},
                },
            ]
        )
    )
    sims = {("Van Gogh style", 3): np.array([0.2, 0.3, 0.4]), ("pixel art", 5): np.array([0.1, 0.1, 0.1, 0.1, 0.6])}
    no_backbone(monkeypatch, VBenchAppearanceStyle)
    monkeypatch.setattr(VBenchAppearanceStyle, "similarities", lambda self, x, style: sims[(style, x.shape[0])])
    rec, rows = evaluate("vbench_appearance_style", tmp_path, suite=suite)
    assert [r["style"] for r in rows] == ["Van Gogh style", "pixel art"]
    assert rec["metrics"]["appearance_style"]["value"] == pytest.approx(1.9 / 8)  # frame-weighted
    assert rec["metrics"]["per_video"]["value"] == pytest.approx((0.3 + 0.2) / 2)
    with pytest.raises(UserError, match="style text"):
        evaluate("vbench_appearance_style", tmp_path / "x")


def test_appearance_similarity_is_logit_scale_times_cosine_over_100():
    from harness.tasks.vbench_appearance_style import VBenchAppearanceStyle

    torch.manual_seed(0)
    task = VBenchAppearanceStyle(style="x", batch_size=2)
    task._net = ct.Clip(VIS, TXT | {"vocab": 49408}).eval()
    with torch.no_grad():
        task._net.logit_scale.fill_(math.log(100.0))
        images = torch.randn(3, 3, 224, 224)
        got = task.similarities(images, "Van Gogh style")
        img = torch.nn.functional.normalize(task._net.visual(images), dim=-1)
        txt = torch.nn.functional.normalize(task._net.text(ct.tokenizer()("Van Gogh style")), dim=-1)
    assert got == pytest.approx((img @ txt[0]).double().numpy(), abs=1e-6)


@pytest.mark.parametrize("task", ["vbench_temporal_style", "vbench_overall_consistency"])
def test_viclip_dimensions_score_the_cosine_with_the_full_prompt_on_8_frames(task, tmp_path, monkeypatch):
    cls = registry.TASKS[task]
    two_videos(monkeypatch, lengths=(3, 12), prompts=("a cat", "a dog"))
    seen = []

    class Fake:
        class text_encoder:
            context_length = 32

        def encode_vision(self, x):
            seen.append(tuple(x.shape))
            return torch.tensor([[3.0, 4.0]]) if x[0, 0, 0, 0, 0] < -0.9 else torch.tensor([[1.0, 0.0]])

        def encode_text(self, ids):
            assert ids.shape == (1, 32)
            cat = ids[0, 2] == ct.tokenizer().encode("a cat")[1]
            return torch.tensor([[4.0, 3.0]]) if cat else torch.tensor([[0.0, 2.0]])

    no_backbone(monkeypatch, cls, Fake())
    rec, rows = evaluate(task, tmp_path)
    assert seen == [(1, 8, 3, 224, 224)] * 2  # 3 frames padded to 8 with the last one; 12 sampled to 8
    assert [r["value"] for r in rows] == pytest.approx([24 / 25, 0.0])
    assert rec["metrics"][cls.main_metric]["value"] == pytest.approx(12 / 25)
    with pytest.raises(UserError, match="num_frames must be 8"):
        evaluate(task, tmp_path / "x", num_frames=4)


def test_i2v_subject_statistics_and_conditioning_image_sources(tmp_path, monkeypatch):
    from harness.tasks.vbench_i2v_subject import VBenchI2VSubject

    image = np.full((32, 40, 3), 7, np.uint8)
    two_videos(monkeypatch, lengths=(3, 4), image=image)
    feats = {3: np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), 4: np.array([[1.0, 0.0]] * 4)}
    no_backbone(monkeypatch, VBenchI2VSubject)
    monkeypatch.setattr(
        VBenchI2VSubject, "embed", lambda self, x: np.array([[1.0, 0.0]]) if x.shape[0] == 1 else feats[x.shape[0]]
    )
    rec, rows = evaluate("vbench_i2v_subject", tmp_path)
    c = 1 / math.sqrt(2)
    first = 0.4 * 1.0 + 0.3 * (c + c) / 2 + 0.3 * c  # max cos to image 1; consecutive cos c, c
    assert [r["value"] for r in rows] == pytest.approx([first, 1.0])
    assert rows[0]["image"] == "supplied by the video source"
    assert rec["metrics"]["i2v_subject"]["value"] == pytest.approx((first + 1.0) / 2)
    # VBench-I2V layout: images=data/crop/<ratio>, image_name from the suite, else the prompt's name
    from PIL import Image

    crop = tmp_path / "crop" / "1-1"
    crop.mkdir(parents=True)
    Image.fromarray(image).save(crop / "cat.png")
    suite = tmp_path / "i2v.json"
    suite.write_text(json.dumps([{"prompt_en": "p a", "dimension": ["i2v_subject"], "image_name": "cat.png"}]))
    rec, rows = evaluate("vbench_i2v_subject", tmp_path / "o2", images=crop, suite=suite)
    assert rows[0]["image"].endswith("cat.png") and rows[1]["value"] is None and "no image 'p b'" in rows[1]["reason"]


def test_i2v_background_scores_exported_dreamsim_embeddings_or_refuses(tmp_path, monkeypatch):
    two_videos(monkeypatch)
    path = tmp_path / "dreamsim.npz"
    frames = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    np.savez(
        path,
        ids=np.array(["v0", "v1"]),
        image_feats=np.array([[0.0, 1.0], [1.0, 0.0]]),
        frame_feats=frames,
        frame_counts=np.array([3, 5]),
    )
    rec, rows = evaluate("vbench_i2v_background", tmp_path, features=path)
    c = 1 / math.sqrt(2)
    v0 = 0.4 * 1 + 0.3 * (0 + 1) / 2 + 0.3 * 0
    v1 = 0.4 * 1 + 0.3 * (1 + 0 + 1 + c) / 4 + 0.3 * 0
    assert [r["value"] for r in rows] == pytest.approx([v0, v1])
    assert rec["metrics"]["i2v_background"]["value"] == pytest.approx((v0 + v1) / 2)
    with pytest.raises(UserError, match="DreamSim"):
        evaluate("vbench_i2v_background", tmp_path / "x")


def test_clip_transform_of_uint8_frames_stays_on_the_uint8_grid():
    from harness.tasks._backbones import CLIP_NORM, clip_transform

    frames = np.zeros((1, 50, 70, 3), np.uint8)
    frames[:, ::2] = 255  # stripes: bicubic over- and undershoots
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CLIP_NORM)
    raw = clip_transform(frames) * std * 255 + mean * 255
    grid = clip_transform(frames, uint8=True) * std * 255 + mean * 255
    assert raw.min() < -1 and raw.max() > 256
    assert grid.min() > -1e-3 and grid.max() < 255 + 1e-3 and torch.allclose(grid, grid.round(), atol=1e-3)


def test_pil_resize_crop_follows_torchvision_sizes():
    out = pil_resize_crop(np.zeros((120, 160, 3), np.uint8), 256, 224)
    assert out.shape == (224, 224, 3)
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 150:] = 255  # a vertical edge at the centre stays centred
    out = pil_resize_crop(img, 50, 50)
    assert out[:, :24].max() < 40 and out[:, 26:].min() > 215


def test_vbench_aggregate_computes_named_dimensions(tmp_path, monkeypatch):
    from harness.tasks.vbench_i2v_subject import VBenchI2VSubject

    two_videos(monkeypatch, lengths=(4, 4), image=np.zeros((32, 40, 3), np.uint8))
    monkeypatch.setattr(VBenchI2VSubject, "build", lambda self: (None, {"calibrated": False, "weights": []}))
    monkeypatch.setattr(VBenchI2VSubject, "embed", lambda self, x: np.ones((x.shape[0], 2)))
    rec, _ = evaluate("vbench", tmp_path, dimensions="i2v_subject", compute="false", allow_uncalibrated="true")
    assert rec["metrics"]["raw@i2v_subject"]["value"] == pytest.approx(1.0)
    assert "UNCALIBRATED" in rec["details"]["sources"]["i2v_subject"] and rec["provenance"]["calibrated"] is False
    with pytest.raises(UserError, match="no task vbench_dynamic_degree"):
        evaluate("vbench", tmp_path / "x", dimensions="dynamic_degree", compute="false")


# -- (e) end to end, random init --------------------------------------------------------------------
def test_cli_aesthetic_quality_random_init_records_uncalibrated(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_VIDEO_WEIGHTS", str(tmp_path / "no-weights"))
    argv = [
        "eval",
        "--method",
        "synthetic_videos",
        "--task",
        "vbench_aesthetic_quality",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--method-arg",
        "motions=static",
        "--method-arg",
        "per_motion=1",
        "--method-arg",
        "frames=2",
        "--method-arg",
        "size=32",
        "--task-arg",
        "num_frames=1",
    ]
    assert main(argv) == 2 and "ViT-L-14.pt" in capsys.readouterr().err  # no weights, no flag: refused
    assert main(argv + ["--task-arg", "allow_uncalibrated=true"]) == 0
    (path,) = (tmp_path / "vbench_aesthetic_quality").rglob("*.json")
    rec = records.read(path)
    assert rec["provenance"]["calibrated"] is False and rec["details"]["calibrated"] is False
    assert rec["details"]["weights"] == [{"file": None, "sha256": None}] * 2
    assert math.isfinite(rec["metrics"]["aesthetic_quality"]["value"])
