"""Video generators as models: `--model diffusers:PATH` names a local diffusers text-to-video
pipeline (a folder written by `save_pretrained`: model_index.json and one sub-folder per component).

A video task that can score generated videos hands the core a `GenerationRequest` (the benchmark's
own prompts and how many videos per prompt; `Task.generation_request`), and the cell's noise-prior
method (`interfaces.NoiseSampler`) supplies the initial latents of every video, so

    harness eval --task vbench_subject_consistency --method pyoco_mixed --model diffusers:PATH

generates the videos and scores them in one command. The core imports no method or task: it calls
the prior's `draw(shape, generator)` and the task's request.

Everything that can be refused is refused before any weights load (`check`): diffusers missing, a
missing folder, a folder that is no diffusers pipeline, a pipeline that makes no video, an
image-to-video pipeline (their conditioning images are not shipped), a task without a prompt suite,
a prior that needs optical flow or a start step below T.

Generated videos are cached content-addressed (harness.artifacts' folder, `generated/<key>`): the key
covers the pipeline's weights sha256 and configs, its class, the prompts, the seed, the noise prior's
name and parameters and every generation setting. A cell that stops half-way keeps the videos it
finished (`<key>.partial/`) and the next run resumes there. The record's provenance `generator`
names the key and every setting, so a score says what generated its videos."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from harness.errors import UserError

PREFIX = "diffusers:"
INSTALL = "pip install 'harness-eval[generate]' (diffusers==0.42.1; it needs no torchvision)"
GENERATOR_VERSION = "1"  # bump when what a cached video holds changes

# Text-to-video pipelines whose latents are [batch, channels, frames, height/s, width/s] (s: the
# VAE's scale factor) and whose __call__ takes prompt, num_frames, height, width,
# num_inference_steps, guidance_scale, generator, latents and output_type="np".
SUPPORTED = {
    "TextToVideoSDPipeline": "ModelScope / Zeroscope text-to-video (UNet3DConditionModel)",
    "AnimateDiffPipeline": "AnimateDiff (UNet2DConditionModel + MotionAdapter)",
}


@dataclass(frozen=True)
class Prompt:
    """One prompt of a benchmark's suite: a stable id, the text, and what the task needs besides
    (VBench's auxiliary_info, ChronoMagic's category)."""

    id: str
    text: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class GenerationRequest:
    """What a task asks a generator for: its benchmark's prompts, in order, and the sampling rule.
    `None` settings take the pipeline's own defaults (its __call__ signature, its UNet's sample size)."""

    suite: str  # "vbench:subject_consistency@<commit>": which list, which version
    prompts: list[Prompt]
    per_prompt: int  # videos per prompt (VBench: 5, 25 for temporal_flickering; ChronoMagic: 3)
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: int = 8  # VBench's sampling code writes 8 fps


def is_spec(model: str | None) -> bool:
    return bool(model) and model.startswith(PREFIX)


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError(f"--model {PREFIX}PATH runs a diffusers pipeline, and diffusers is not installed: {INSTALL}")
    return diffusers


def _folder(spec: str) -> Path:
    ref = spec[len(PREFIX) :]
    if not ref:
        raise UserError(f"--model {spec}: name the pipeline folder, {PREFIX}PATH")
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise UserError(
            f"--model {spec}: {path} is not a folder; {PREFIX} takes a local diffusers pipeline folder "
            f"(one written by save_pretrained, with model_index.json); downloads are not made"
        )
    return path


def _model_index(path: Path, spec: str) -> dict:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except OSError:
        raise UserError(f"--model {spec}: {path} has no model_index.json, so it is not a diffusers pipeline") from None
    except ValueError as e:
        raise UserError(f"--model {spec}: {path / 'model_index.json'} is not valid JSON ({e})") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise UserError(f"--model {spec}: {path / 'model_index.json'} names no pipeline class (_class_name)")
    return index


def components(index: dict) -> list[str]:
    """The pipeline's component folders (model_index.json entries [library, class])."""
    return sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None)


def check(spec: str, request: GenerationRequest | None, task_name: str, capable=()) -> dict:
    """Everything about `--model diffusers:PATH` that can fail, before any weights load: returns
    {"path", "pipeline"}. `capable`: the tasks that can render prompts (named when this one cannot)."""
    if request is None:
        raise UserError(
            f"task {task_name} has no prompt suite for a video generator to render, so --model {PREFIX}PATH "
            f"does not apply to it; tasks that have one: {', '.join(capable) or 'none'}"
        )
    path = _folder(spec)
    index = _model_index(path, spec)
    diffusers = require_diffusers()
    name = index["_class_name"]
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise UserError(f"--model {spec}: {name} (model_index.json) is not a pipeline class of diffusers {_version()}")
    call = inspect.signature(cls.__call__).parameters
    if name not in SUPPORTED:
        if "num_frames" not in call:
            why = f"{name} makes images, not videos"
        elif "image" in call and call["image"].default is inspect.Parameter.empty:
            why = (
                f"{name} is an image-to-video pipeline: it needs conditioning images, and VBench-I2V's "
                f"image suite is not shipped with the harness"
            )
        else:
            why = f"{name} is a video pipeline whose latent layout the generator adapter does not handle yet"
        raise UserError(f"--model {spec}: {why}; supported: " + ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items()))
    for comp in components(index):
        folder = path / comp
        if not folder.is_dir():
            raise UserError(f"--model {spec}: component {comp!r} of model_index.json has no folder {folder}")
        has_weights = list(folder.glob("*.safetensors"))
        pickled = list(folder.glob("*.bin")) + list(folder.glob("*.pt")) + list(folder.glob("*.ckpt"))
        if pickled and not has_weights:
            raise UserError(
                f"--model {spec}: component {comp} holds only pickle-format weights, which can execute code "
                f"when loaded; the harness loads safetensors only (save_pretrained(safe_serialization=True))"
            )
    if request.per_prompt < 1 or not request.prompts:
        raise UserError(f"task {task_name}: the generation request has no prompts or no videos per prompt")
    return {"path": path, "pipeline": name}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:
        return "?"


def identity(spec: str) -> tuple[str, str | None]:
    """(normalised id, sha256 of the weights of every component) without loading anything."""
    from harness.models import weights_sha256

    path = _folder(spec)
    index = _model_index(path, spec)
    lines = [f"{c}:{weights_sha256(path / c)}" for c in components(index) if (path / c).is_dir()]
    sha = hashlib.sha256("\n".join(lines).encode()).hexdigest() if lines else None
    return f"{PREFIX}{path.resolve()}", sha


def config_sha256(path: Path) -> str:
    """sha256 of every JSON configuration of the pipeline (model_index.json, the scheduler's, ...):
    they change the videos without changing any weight."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.json")):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def video_seed(seed: int, prompt: Prompt, index: int) -> int:
    """A seed per video, different for every (prompt, index), reproducible, and independent of the
    prompts before it (so --limit and a longer suite draw the same noise for the same video)."""
    digest = hashlib.sha256(f"{seed}\0{prompt.id}\0{prompt.text}\0{index}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def file_stem(prompt: Prompt, index: int) -> str:
    """VBench's naming, `<prompt>-<index>`, where the prompt makes a file name; else `<id>-<index>`."""
    text = prompt.text
    ok = text and "/" not in text and "\0" not in text and len(text.encode()) <= 200 and not text.startswith(".")
    return f"{text if ok else prompt.id}-{index}"


def _resolved(sample_size: int, scale: int, cls, request: GenerationRequest) -> dict:
    """The settings actually used: the request's, else the pipeline's defaults (its __call__'s
    signature; height and width: the UNet's sample size times the VAE's scale factor)."""
    call = inspect.signature(cls.__call__).parameters

    def default(name, fallback):
        d = call[name].default if name in call else inspect.Parameter.empty
        return fallback if d is inspect.Parameter.empty or d is None else d

    return {
        "frames": int(request.frames or default("num_frames", 16)),
        "height": int(request.height or sample_size * scale),
        "width": int(request.width or sample_size * scale),
        "steps": int(request.steps or default("num_inference_steps", 50)),
        "guidance": float(request.guidance if request.guidance is not None else default("guidance_scale", 7.5)),
        "per_prompt": int(request.per_prompt),
        "fps": int(request.fps),
    }


def _torch_dtype(loading, device: str):
    import torch

    name = getattr(loading, "dtype", None)
    if name in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, name)


def videos(ctx, request: GenerationRequest, limit: int | None = None) -> list:
    """Generate (or take from the cache) the request's videos with the cell's noise prior; returns
    VideoRefs reading the cached mp4 files, and notes the generator's provenance in ctx.notes."""
    import numpy as np
    import torch

    from harness import artifacts, params
    from harness.models import pick_device
    from harness.video import VideoRef, read_video, write_video

    priors = [m for m in ctx.methods if m.kind == "noise_prior"]
    if len(priors) != 1:
        raise UserError(f"--model {PREFIX}PATH needs exactly one noise_prior method, got {len(priors)}")
    prior = priors[0]
    info = check(ctx.model, request, "this task")
    path, name = info["path"], info["pipeline"]
    diffusers = require_diffusers()
    cls = getattr(diffusers, name)
    device = pick_device(getattr(ctx, "device", "auto") or "auto")
    dtype = _torch_dtype(getattr(ctx, "loading", None), device)
    model_id, weights = identity(ctx.model)

    # the videos this cell needs: prompt by prompt, index by index (VBench's order), up to --limit
    wanted = [(p, i) for p in request.prompts for i in range(request.per_prompt)]
    wanted = wanted[:limit] if limit else wanted
    prompts_used = list(dict.fromkeys(p for p, _ in wanted))

    pipe = None
    settings = _settings_from_config(path, cls, request)
    fields_ = {
        "generator_version": GENERATOR_VERSION,
        "pipeline": name,
        "weights_sha256": weights,
        "config_sha256": config_sha256(path),
        "prompts": [[p.id, p.text] for p in prompts_used],
        "per_prompt_indices": [i for _, i in wanted],
        "seed": ctx.seed,
        "noise_prior": {"name": prior.name, "params": params.to_dict(prior)},
        "settings": settings,
        "dtype": str(dtype).replace("torch.", ""),
        "device_type": device.split(":")[0],
    }
    key = artifacts.key(fields_)
    done = artifacts.root() / "generated" / key
    partial = artifacts.root() / "generated" / f"{key}.partial"
    # The prior's noise for every video is drawn whether or not the video is cached (it is cheap):
    # its fingerprint must match the one stored with the video, so a cached video is only reused
    # when the prior, as it is now, still draws the noise that made it (and the prior's own effect
    # check sees the draw).
    shape = latent_shape(settings)

    def draw(p, i):
        noise = prior.draw(shape, torch.Generator().manual_seed(video_seed(ctx.seed, p, i)))
        return noise, hashlib.sha256(noise.contiguous().numpy().tobytes()).hexdigest()[:16]

    fingerprints = {(p, i): draw(p, i)[1] for p, i in wanted}  # noise is redrawn (not kept) where needed
    stored = _stored_fingerprints(done)
    cached = bool(stored) and all(stored.get(file_stem(p, i)) == fingerprints[(p, i)] for p, i in wanted)
    folder = done if cached else partial
    entries = []
    generated = 0
    todo = (
        set() if cached else {(p, i) for p, i in wanted if _partial_fingerprint(partial, p, i) != fingerprints[(p, i)]}
    )
    if not cached:
        partial.mkdir(parents=True, exist_ok=True)
    if todo:
        pipe = _load(cls, path, dtype, device, ctx.model)
        if (pipe.vae_scale_factor, pipe.unet.config.in_channels) != (
            settings["vae_scale_factor"],
            settings["latent_channels"],
        ):
            raise UserError(
                f"--model {ctx.model}: the loaded pipeline's VAE scale or latent channels differ from its configs"
            )
    for p, i in ctx.iterate(wanted, total=len(wanted), desc=f"generate {name}"):
        stem = file_stem(p, i)
        file = folder / f"{stem}.mp4"
        seed = video_seed(ctx.seed, p, i)
        fingerprint = fingerprints[(p, i)]
        if (p, i) in todo:
            noise, again = draw(p, i)
            if again != fingerprint:
                raise RuntimeError(f"noise prior {prior.name} drew different noise from the same seed")
            # [frames, channels, h, w] -> the pipeline's [batch, channels, frames, h, w]
            latents = noise.permute(1, 0, 2, 3).unsqueeze(0).to(device=device, dtype=dtype)
            out = pipe(
                prompt=p.text,
                num_frames=settings["frames"],
                height=settings["height"],
                width=settings["width"],
                num_inference_steps=settings["steps"],
                guidance_scale=settings["guidance"],
                generator=torch.Generator(device).manual_seed(seed),
                latents=latents,
                output_type="np",
            )
            frames = np.asarray(out.frames[0])
            frames = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
            tmp = folder / f".{stem}.tmp.mp4"
            write_video(tmp, frames, settings["fps"])
            os.replace(tmp, file)
            (folder / f".{stem}.noise").write_text(fingerprint)
            generated += 1
        entries.append(
            {
                "id": stem,
                "prompt_id": p.id,
                "prompt": p.text,
                "index": i,
                "seed": seed,
                "file": file.name,
                "noise_sha256": fingerprint,
            }
        )
    if not cached:
        (partial / "meta.json").write_text(json.dumps(dict(fields_, key=key, videos=entries), indent=1) + "\n")
        if done.exists():  # stale (the prior now draws other noise) or finished meanwhile by another process
            shutil.rmtree(done, ignore_errors=True)
        os.replace(partial, done)
        folder = done
    ctx.notes["generator"] = {
        "model": model_id,
        "pipeline": name,
        "diffusers": _version(),
        "suite": request.suite,
        "prompts": len(prompts_used),
        "videos": len(entries),
        "generated_now": generated,
        "cache_key": key,
        "cache_folder": str(folder),
        "device": device,
        **{k: v for k, v in fields_.items() if k not in ("prompts", "per_prompt_indices", "pipeline")},
        "applies": prior_applies(prior),
    }
    by_id = {p.id: p for p in prompts_used}
    return [
        VideoRef(
            id=e["id"],
            prompt=e["prompt"],
            loader=lambda n, f=folder / e["file"]: read_video(f, n),
            fps=float(settings["fps"]),
            path=str(folder / e["file"]),
            meta=dict(by_id[e["prompt_id"]].meta, prompt_id=e["prompt_id"], seed=e["seed"], index=e["index"]),
        )
        for e in entries
    ]


def prior_applies(prior) -> str:
    """What of the prior the generator uses: its initial noise; a prior that also changes the
    denoising (FreeNoise's window fusion) is applied through its noise only, and the record says so."""
    own = getattr(type(prior), "denoise", None)
    base = [getattr(c, "denoise", None) for c in type(prior).__mro__[1:] if "denoise" in c.__dict__]
    if own is not None and base and own is not base[-1]:
        return "initial noise only (its denoising change is not applied inside the pipeline)"
    return "initial noise"


def _settings_from_config(path: Path, cls, request: GenerationRequest) -> dict:
    """The resolved settings from the pipeline's config files alone (no weights are read)."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--model {PREFIX}{path}: unreadable unet/vae config ({e})") from None
    scale = 2 ** (len(vae.get("block_out_channels", [0])) - 1)  # diffusers' vae_scale_factor
    size = unet.get("sample_size") or 64
    out = _resolved(size if isinstance(size, int) else size[0], scale, cls, request)
    out["latent_channels"] = int(unet.get("in_channels", 4))
    out["vae_scale_factor"] = scale
    return out


def _stored_fingerprints(done: Path) -> dict[str, str]:
    """{video id: noise fingerprint} of a finished cache folder ({} when there is none)."""
    try:
        meta = json.loads((done / "meta.json").read_text())
        return {e["id"]: e["noise_sha256"] for e in meta["videos"] if (done / e["file"]).is_file()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _partial_fingerprint(partial: Path, prompt: Prompt, index: int) -> str | None:
    """The noise fingerprint of a video an interrupted run finished, None when there is none."""
    stem = file_stem(prompt, index)
    try:
        return (partial / f".{stem}.noise").read_text() if (partial / f"{stem}.mp4").is_file() else None
    except OSError:
        return None


def latent_shape(settings: dict) -> tuple[int, int, int, int]:
    """[frames, channels, height/s, width/s]: the noise a prior draws for one video."""
    s = settings["vae_scale_factor"]
    if settings["height"] % s or settings["width"] % s:
        raise UserError(f"height and width must be multiples of the VAE scale factor {s}, got {settings}")
    return (settings["frames"], settings["latent_channels"], settings["height"] // s, settings["width"] // s)


def _load(cls, path: Path, dtype, device: str, spec: str):
    try:
        import transformers

        diffusers = require_diffusers()
        for lib in (diffusers, transformers):  # deprecation notes, per-component and per-weight progress bars
            lib.utils.logging.set_verbosity_error()
            lib.utils.logging.disable_progress_bar()
        pipe = cls.from_pretrained(str(path), dtype=dtype, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load pipeline {spec!r}: {first}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
