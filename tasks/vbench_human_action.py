"""VBench human action (UMT ViT-L/16 fine-tuned on Kinetics-400, in plain PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness.errors import UserError
from harness.registry import register
from harness.backbones._common import IMAGENET
from harness.backbones.video_vit import TINY_UMT, UMT_L16_K400, VideoViT, load_video_vit
from harness.tasks._backbone_tasks import BackboneTask
from harness.tasks._vbench import action_label, human_action_correct
from harness.tasks._weights import entry, weights_root
from harness.video import require


def read_classes(path: Path) -> list[str]:
    """VBench's build_dict: lines "<class name>\\t<index>" (names lower-cased); a file of one name per
    line (index = line number) is accepted too. Exactly 400 distinct indices 0..399 are required."""
    names: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, idx = line.strip().rpartition("\t")
        if not sep:
            name, idx = line.strip(), str(len(names))
        if not idx.isdigit():
            raise UserError(f"{path}:{n}: expected '<class name><TAB><index>', got {line!r}")
        names[int(idx)] = name.lower()
    if sorted(names) != list(range(400)):
        raise UserError(f"{path}: expected the 400 Kinetics classes with indices 0..399, got {len(names)}")
    return [names[i] for i in range(400)]


def umt_transform(frames: np.ndarray, short: int = 256, crop: int = 224) -> torch.Tensor:
    """VBench human_action.py's transform with UMT's video_transforms on numpy frames:
    Resize(256, 'bilinear') of the short side (cv2.INTER_LINEAR, the long side truncated to int),
    CenterCrop(224) at round((size - 224)/2), /255, ImageNet normalisation. [3, T, 224, 224]."""
    cv2 = require("cv2")
    h, w = frames.shape[1:3]
    size = (short, int(short * h / w)) if w < h else (int(short * w / h), short)  # (width, height)
    out = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])
    y0, x0 = int(round((out.shape[1] - crop) / 2)), int(round((out.shape[2] - crop) / 2))
    x = torch.from_numpy(np.ascontiguousarray(out[:, y0 : y0 + crop, x0 : x0 + crop])).float() / 255
    mean, std = (torch.tensor(s).view(1, 1, 1, 3) for s in IMAGENET)
    return ((x - mean) / std).permute(3, 0, 1, 2)


def video_label(ref) -> str:
    """The action label VBench parses from the file name (lower-cased; text after "person is " up to
    "-" or "_"); the prompt stands in for sources without files."""
    name = Path(ref.path).name if ref.path else ref.prompt
    head = name.lower().split("-")[0]
    return action_label(head) or head.split("_")[0]


@register
@dataclass
class VBenchHumanAction(BackboneTask):
    """VBench human_action (vbench/human_action.py): UMT ViT-L/16 fine-tuned on Kinetics-400
    (timm `vit_large_patch16_224`, 400 classes, 16 frames, tubelet 1, mean pooling; written here in
    plain PyTorch, backbones/video_vit.py) on 16 frames sampled "middle"; Resize(256) → CenterCrop(224) →
    ImageNet normalisation; sigmoid of the logits, top 5 rounded to 4 decimals; a video is correct
    when a top-5 class with probability ≥ 0.85 equals the label parsed from its file name ("A person
    is <action>-<i>.mp4"). The dimension is the accuracy over videos.

    Frames: 16 sampled "middle" (shared/reference/anchors-video.md); VBench's older human_action.py
    passes every frame to the 16-frame network, which works only for 16-frame videos. The resize is
    UMT's video_transforms on numpy frames (cv2 INTER_LINEAR), as VBench's load_video hands them over.

    Needs umt_l16_k400 and VBench's class list kinetics400_classes of tasks/weights.toml
    ("<name>\\t<index>" lines) in the weights folder. --allow-uncalibrated runs a random-init network
    (and, without the class list, class names "class <i>", which never match: plumbing only);
    `arch=tiny` is a 2-layer configuration for those plumbing runs."""

    name = "vbench_human_action"
    benchmark_dimension = "vbench:human_action"  # benchmark:dimension (the coverage table, the generator's prompt list)
    backend = "UMT ViT-L/16 Kinetics-400 in plain PyTorch"
    weight_files = ("umt_l16_k400", "kinetics400_classes")
    fidelity = "faithful"
    version = "1"
    main_metric = "human_action"
    unit = "accuracy"
    summary = "VBench human action (UMT ViT-L/16 Kinetics-400 in plain PyTorch; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "arch": "tiny"}
    num_frames: int | None = field(default=16, metadata={"help": "frames sampled 'middle' (VBench: 16)"})
    arch: str = field(
        default="l16", metadata={"help": "l16 (UMT ViT-L/16) or tiny (plumbing runs with --allow-uncalibrated)"}
    )
    threshold: float = field(default=0.85, metadata={"help": "probability a top-5 class needs (VBench: 0.85)"})

    def __post_init__(self):
        if self.arch not in ("l16", "tiny"):
            raise ValueError("arch must be l16 or tiny")
        if self.arch == "tiny" and not self.allow_uncalibrated:
            raise ValueError("arch=tiny is a random-init plumbing configuration: it needs allow_uncalibrated")
        if self.num_frames != 16:
            raise ValueError("the UMT network takes exactly 16 frames")

    def build(self):
        config = UMT_L16_K400 if self.arch == "l16" else TINY_UMT
        self._loaded = {}

        def make(paths):
            net = VideoViT(config)
            if paths:
                self._loaded = load_video_vit(net, paths[0], self.name, optional=("pos_embed",))
            return net

        if self.arch == "tiny":
            torch.manual_seed(0)
            net, facts = make(None).eval(), {"calibrated": False, "weights": []}
        else:
            net, facts = self.backbone(list(self.weight_files[:1]), make)
        self._classes, facts["classes_file"] = self.classes()  # after the weights: name the big file first
        return net, facts

    def classes(self) -> tuple[list[str], str | None]:
        spec = entry("kinetics400_classes", self.name)
        path = weights_root(self.weights_dir) / spec.file
        if path.is_file():
            return read_classes(path), str(path)
        if not self.allow_uncalibrated:
            raise UserError(
                f"{self.name} needs VBench's Kinetics-400 class list: put {spec.file} in {path.parent}: {spec.where()}"
            )
        return [f"class {i}" for i in range(400)], None

    def run(self, ctx):
        result = super().run(ctx)
        result.details.update(
            arch=self.arch,
            threshold=self.threshold,
            pos_embed=(
                "interpolated sine-cosine table (not in the checkpoint)"
                if "pos_embed" in self._loaded.get("missing_optional", ["pos_embed"])
                else "from the checkpoint"
            ),
        )
        return result

    def score(self, ref, frames):
        if len(frames) != 16:
            return {"value": None, "reason": f"{len(frames)} frames < 16"}
        size = self._net.config.image
        x = umt_transform(frames, short=round(size * 256 / 224), crop=size)[None]
        with torch.no_grad():
            probs = torch.sigmoid(self._net(x))[0].double().numpy()
        probs = np.round(probs, 4)  # VBench rounds the top-5 values before comparing
        label = video_label(ref)
        top = np.argsort(probs)[::-1][:5]
        return {
            "value": float(human_action_correct(probs, self._classes, label, 5, self.threshold)),
            "label": label,
            "top5": [[self._classes[i], float(probs[i])] for i in top],
        }
