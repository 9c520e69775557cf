"""The diffusers generator adapter (`--model diffusers:PATH`, harness/generator.py).

MECHANISM ONLY: the pipeline is a tiny, randomly initialised ModelScope-style text-to-video
pipeline (UNet3DConditionModel, AutoencoderKL, a 2-layer CLIP text encoder, a character-level CLIP
tokenizer, DDIM) built here and saved with save_pretrained; its videos are noise-like and every
score on them is meaningless. What is tested is the plumbing: the benchmark's prompts are rendered,
the noise prior's draw is the latents the pipeline starts from, the videos are cached under a key
that covers what shapes them, the record says what generated them, and bad input is refused with
exit code 2 before any weights load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness import generator, records, runner
from harness.errors import UserError
from harness.video import read_video

diffusers = pytest.importorskip("diffusers", reason="the generator adapter needs diffusers: pip install '.[generate]'")

FRAMES, SIZE = 4, 16
FAST = {"gen_steps": "2", "gen_frames": str(FRAMES), "videos_per_prompt": "2", "static_filter": "false"}


def _tokenizer(folder):
    """A character-level CLIP tokenizer (every printable ASCII character, with and without the
    end-of-word mark; no merges), so no tokenizer is downloaded."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16), len(vocab)


def _vae_and_text(n_vocab):
    """A one-block VAE (scale factor 1) and a 2-layer CLIP text encoder, both random-init."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        sample_size=SIZE,
        norm_num_groups=2,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=n_vocab,
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    return vae, text


def _unet_args(dims: str) -> dict:
    """Two tiny blocks (one with cross-attention) for UNet3DConditionModel ("3D") or UNet2DConditionModel ("2D")."""
    return dict(
        block_out_channels=(8, 8),
        layers_per_block=1,
        sample_size=SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=(f"CrossAttnDownBlock{dims}", f"DownBlock{dims}"),
        up_block_types=(f"UpBlock{dims}", f"CrossAttnUpBlock{dims}"),
        cross_attention_dim=8,
        attention_head_dim=4,
        norm_num_groups=2,
    )


def _save_pipeline(root, kind: str):
    """A tiny random-init pipeline saved with save_pretrained: "t2v" (TextToVideoSDPipeline,
    UNet3DConditionModel) or "animatediff" (AnimateDiffPipeline, UNet2DConditionModel + MotionAdapter)."""
    import diffusers

    tok, n_vocab = _tokenizer(root / "tok")
    torch.manual_seed(0)
    vae, text = _vae_and_text(n_vocab)
    parts = dict(vae=vae, text_encoder=text, tokenizer=tok, scheduler=diffusers.DDIMScheduler(clip_sample=False))
    if kind == "t2v":
        pipe = diffusers.TextToVideoSDPipeline(unet=diffusers.UNet3DConditionModel(**_unet_args("3D")), **parts)
    else:
        adapter = diffusers.MotionAdapter(
            block_out_channels=(8, 8), motion_layers_per_block=1, motion_norm_num_groups=2, motion_num_attention_heads=2
        )
        unet = diffusers.UNet2DConditionModel(**_unet_args("2D"))
        pipe = diffusers.AnimateDiffPipeline(unet=unet, motion_adapter=adapter, **parts)
    pipe.save_pretrained(root / kind, safe_serialization=True)
    return root / kind


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return _save_pipeline(tmp_path_factory.mktemp("pipe"), "t2v")


@pytest.fixture(scope="module")
def tiny_animatediff(tmp_path_factory):
    return _save_pipeline(tmp_path_factory.mktemp("animatediff"), "animatediff")


def _eval(pipe_dir, tmp_path, method="pyoco_mixed", task="vbench_temporal_flickering", method_args=None, **kw):
    cells = runner.resolve(
        [task], [method], f"diffusers:{pipe_dir}", dict(FAST), dict(method_args or {}), seed=0, limit=3
    )
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path / "out", **kw)
    return out


def test_generates_the_benchmarks_prompts_scores_and_caches(tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "artifacts"))
    out = _eval(tiny_pipeline, tmp_path)
    rec = records.read(out.path)
    gen = rec["provenance"]["generator"]
    assert gen["pipeline"] == "TextToVideoSDPipeline" and gen["suite"].startswith("vbench@45e79ec:temporal_flickering")
    assert gen["noise_prior"] == {"name": "pyoco_mixed", "params": {"alpha": 1.0}}
    assert gen["settings"]["steps"] == 2 and gen["settings"]["frames"] == FRAMES and gen["settings"]["per_prompt"] == 2
    assert gen["videos"] == 3 and gen["generated_now"] == 3 and gen["weights_sha256"] == rec["model"]["sha256"]
    assert rec["model"]["id"].startswith("diffusers:") and "diffusers video pipeline" in rec["model"]["label"]
    samples = records.read_samples(out.path)
    from harness.tasks._prompt_suites import vbench_prompts

    first = vbench_prompts("temporal_flickering")[0].text
    assert [s["prompt"] for s in samples] == [first, first, vbench_prompts("temporal_flickering")[1].text]
    assert [s["id"] for s in samples][:2] == [f"{first}-0", f"{first}-1"]  # VBench's `<prompt>-<index>` naming
    assert [s["sample_index"] for s in samples] == [0, 1, 0] and len({s["seed"] for s in samples}) == 3
    value = rec["metrics"]["temporal_flickering"]["value"]
    assert 0 <= value <= 1 and rec["metrics"]["temporal_flickering"]["n"] == 3

    again = _eval(tiny_pipeline, tmp_path, overwrite=True)  # the cache: nothing is generated twice
    rec2 = records.read(again.path)
    assert rec2["provenance"]["generator"]["generated_now"] == 0
    assert rec2["provenance"]["generator"]["cache_key"] == gen["cache_key"]
    assert rec2["metrics"]["temporal_flickering"]["value"] == value

    other = _eval(tiny_pipeline, tmp_path, method_args={"alpha": "3"})  # other prior params: another key
    assert records.read(other.path)["provenance"]["generator"]["cache_key"] != gen["cache_key"]


def test_the_priors_noise_is_what_the_pipeline_starts_from(tiny_pipeline, tmp_path, monkeypatch):
    """The cached video equals the pipeline run by hand from the prior's draw with the video's seed,
    and differs from the same pipeline started from independent noise."""
    from diffusers import TextToVideoSDPipeline

    from harness import registry

    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "artifacts"))
    out = _eval(tiny_pipeline, tmp_path, method="fixed")
    gen = records.read(out.path)["provenance"]["generator"]
    row = records.read_samples(out.path)[0]
    video = read_video(f"{gen['cache_folder']}/{row['id']}.mp4").astype(np.float32)

    pipe = TextToVideoSDPipeline.from_pretrained(str(tiny_pipeline))
    prompt = generator.Prompt(row["prompt"], row["prompt"])
    seed = generator.video_seed(0, prompt, 0)

    def run(noise):
        lat = noise.permute(1, 0, 2, 3)[None]
        frames = pipe(
            prompt=prompt.text,
            num_frames=FRAMES,
            height=SIZE,
            width=SIZE,
            num_inference_steps=2,
            guidance_scale=gen["settings"]["guidance"],
            generator=torch.Generator("cpu").manual_seed(seed),
            latents=lat,
            output_type="np",
        ).frames[0]
        return (np.clip(np.asarray(frames), 0, 1) * 255).round()

    shape = (FRAMES, 4, SIZE, SIZE)
    fixed = registry.method("fixed")().draw(shape, torch.Generator().manual_seed(seed))
    indep = registry.method("independent")().draw(shape, torch.Generator().manual_seed(seed))

    def luma(x):  # H.264 at crf 0 keeps luma exactly; yuv420p subsamples the chroma
        return x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)

    same, other = np.abs(luma(video) - luma(run(fixed))).mean(), np.abs(luma(video) - luma(run(indep))).mean()
    assert same < 2.0, same
    assert other > 4 * max(same, 0.5), (same, other)


def test_animatediff_pipelines_generate_too(tiny_animatediff, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "artifacts"))
    out = _eval(tiny_animatediff, tmp_path, method="pyoco_progressive")
    rec = records.read(out.path)
    gen = rec["provenance"]["generator"]
    assert gen["pipeline"] == "AnimateDiffPipeline" and gen["videos"] == 3 and gen["generated_now"] == 3
    assert gen["noise_prior"]["name"] == "pyoco_progressive" and rec["metrics"]["temporal_flickering"]["n"] == 3
    frames = read_video(f"{gen['cache_folder']}/{records.read_samples(out.path)[0]['id']}.mp4")
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)


def _fake_pipeline(tmp_path, cls_name):
    d = tmp_path / cls_name
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": cls_name, "unet": ["diffusers", "X"]}))
    return d


@pytest.mark.parametrize(
    "model,task,method,match",
    [
        ("diffusers:{tmp}/missing", "vbench_temporal_flickering", "pyoco_mixed", "is not a folder"),
        ("diffusers:{tmp}", "vbench_temporal_flickering", "pyoco_mixed", "no model_index.json"),
        ("diffusers:{image}", "vbench_temporal_flickering", "pyoco_mixed", "makes images, not videos"),
        ("diffusers:{i2v}", "vbench_temporal_flickering", "pyoco_mixed", "image-to-video pipeline"),
        ("diffusers:{pipe}", "vbench_temporal_flickering", "bilinear_warp", "no flow to give it"),
        ("diffusers:{pipe}", "vbench_temporal_flickering", "analytic_init", "starts every pipeline at T"),
        ("diffusers:{pipe}", "vbench_temporal_flickering", "synthetic_videos", "a noise prior starts them"),
        ("diffusers:{pipe}", "vbench_camera_motion_proxy", "pyoco_mixed", "no prompt suite"),
        ("diffusers:{pipe}", "needle", "yarn", "no prompt suite"),
        (None, "vbench_temporal_flickering", "pyoco_mixed", "add --model diffusers:PATH"),
    ],
)
def test_bad_input_is_refused_before_any_weights_load(tiny_pipeline, tmp_path, model, task, method, match):
    names = {
        "tmp": tmp_path,
        "pipe": tiny_pipeline,
        "image": _fake_pipeline(tmp_path, "StableDiffusionPipeline"),
        "i2v": _fake_pipeline(tmp_path, "StableVideoDiffusionPipeline"),
    }
    with pytest.raises(UserError, match=match):
        runner.resolve([task], [method], model.format(**names) if model else None, {}, {})


def test_generation_settings_without_a_generator_are_refused():
    with pytest.raises(UserError, match="set how a generator makes the videos"):
        runner.resolve(["vbench_temporal_flickering"], ["synthetic_videos"], None, {"gen_steps": "4"}, {})


def test_missing_diffusers_is_one_clear_error_with_exit_2(tiny_pipeline, tmp_path, monkeypatch, capsys):
    import sys

    from harness import cli

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    code = cli.main(
        [
            "eval",
            "--task",
            "vbench_temporal_flickering",
            "--method",
            "pyoco_mixed",
            "--model",
            f"diffusers:{tiny_pipeline}",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "diffusers is not installed" in err and "harness-eval[generate]" in err
    assert "Traceback" not in err
