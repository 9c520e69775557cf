"""VBench-I2V video-image subject consistency (DINO ViT-B/16)."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.backbones._common import load_into
from harness.backbones.dino import dino_vit
from harness.tasks._backbone_tasks import BackboneTask
from harness.tasks._clip_tasks import (
    condition_image,
    dino_transform_image_internet,
    dino_transform_internet,
    read_suite,
)
from harness.tasks._vbench import i2v_score
from harness.tasks._weights import file_of


@register
@dataclass
class VBenchI2VSubject(BackboneTask):
    """VBench-I2V i2v_subject (vbench2_beta_i2v/i2v_subject.py): DINO ViT-B/16 features of the
    conditioning image (as a PIL image: Resize(256, bicubic) -> CenterCrop(224) -> ToTensor ->
    ImageNet norm) and of every frame (the same on the float frame tensor), L2-normalised; per
    video 0.4·max_i max(0, cos(img, f_i)) + 0.3·mean and 0.3·min of max(0, cos(f_i-1, f_i)); the
    dimension is the mean over videos. (An older VBench revision weighted 0.5/0.5/0; the current
    one 0.4/0.3/0.3.) torchvision's tensor Resize antialiases since 0.17 (`antialias`).

    The image: `images=DIR` in VBench-I2V's layout (data/crop/<ratio>/<image_name>, image_name from
    `suite=` vbench2_i2v_full_info.json, else the prompt + an image extension), or the one the
    video source supplies (synthetic_videos: the first frame); `first_frame_as_image` falls back on
    each video's own first frame (a self-consistency check, not VBench-I2V's protocol; the row says
    so). Needs the dino_vitb16 file of tasks/weights.toml;
    --allow-uncalibrated runs a random-init ViT."""

    name = "vbench_i2v_subject"
    benchmark_dimension = (
        "vbench-i2v:i2v_subject"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    weight_files = ("dino_vitb16",)
    backend = f"DINO ViT-B/16 from timm ({file_of('dino_vitb16')})"
    fidelity = "faithful"
    version = "1"
    main_metric = "i2v_subject"
    summary = "VBench-I2V video-image subject consistency (DINO ViT-B/16 from timm; local weights)"
    smoke_args = {"allow_uncalibrated": "true", "num_frames": "2", "max_videos": "1", "first_frame_as_image": "true"}
    images: str = field(default="", metadata={"help": "folder of conditioning images (VBench-I2V data/crop/<ratio>)"})
    suite: str = field(default="", metadata={"help": "vbench2_i2v_full_info.json: image_name per prompt"})
    antialias: bool = field(default=True, metadata={"help": "antialiased frame resize (torchvision >= 0.17)"})
    first_frame_as_image: bool = field(
        default=False,
        metadata={"help": "no image found: use the video's own first frame (a self-check, not VBench-I2V's protocol)"},
    )

    def build(self):
        self._suite = read_suite(self.suite, self.name) if self.suite else []
        return self.backbone(
            list(self.weight_files), lambda p: load_into(dino_vit(), p[0], "", self.name) if p else dino_vit()
        )

    def score(self, ref, frames):
        image, source = condition_image(self, ref)
        if image is None:
            return {"value": None, "reason": source}
        if len(frames) < 2:
            return {"value": None, "reason": "fewer than 2 frames"}
        feats = self.embed(dino_transform_internet(frames, self.antialias))
        image_feat = self.embed(dino_transform_image_internet(image[None]))[0]
        return {"value": i2v_score(image_feat, feats), "image": source}
