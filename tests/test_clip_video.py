"""The CLIP-family VBench dimensions: the scoring rules on mocked backbone outputs (hand-computed),
the transforms, and the --allow-uncalibrated end to end run. The backbones themselves:
test_clip_models.py."""

import json
import math

import numpy as np
import pytest
import torch

from harness import records, registry, runner
from harness.backbones.clip import tokenize
from harness.cli import main
from harness.errors import UserError
from harness.methods.video.synthetic import SyntheticVideos
from harness.tasks._clip_tasks import pil_resize_crop
from harness.video import VideoRef, middle_indices
from tests.test_clip_models import tiny_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")
registry.load()


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
    task._net = tiny_clip(vocab=49408)
    with torch.no_grad():
        task._net.logit_scale.fill_(math.log(100.0))
        images = torch.randn(3, 3, 224, 224)
        got = task.similarities(images, "Van Gogh style")
        img = torch.nn.functional.normalize(task._net.visual(images), dim=-1)
        txt = torch.nn.functional.normalize(task._net.encode_text(tokenize("Van Gogh style")), dim=-1)
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
            cat = ids[0, 2] == tokenize("a cat")[0, 2]
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
    from harness.backbones.clip import CLIP_NORM, clip_transform

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
    with pytest.raises(UserError, match="no task vbench_motion_smoothness"):  # only its proxy exists
        evaluate("vbench", tmp_path / "x", dimensions="motion_smoothness", compute="false")


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
