"""VBench-I2V video-image background consistency (DreamSim features computed elsewhere)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.video import report_loaded
from harness.registry import register
from harness.tasks._vbench import i2v_score

MISSING = (
    "vbench_i2v_background needs DreamSim embeddings, which this project does not compute: VBench's "
    "i2v_background.py calls `dreamsim(pretrained=True)`, in dreamsim 0.1.0 an ensemble of DINO ViT-B/16 "
    "(CLS token), CLIP ViT-B/16 and OpenCLIP ViT-B/16 (projected embeddings), each LoRA-adapted through "
    "peft, concatenated (1792 values) and normalised; its weights (a zip of the three backbones and "
    "LoRA adapters) download at run time and VBench pins no dreamsim version. Compute the embeddings "
    "with the official package (Resize((224, 224), bicubic), [0, 1], `model.embed` of the conditioning "
    "image and of every frame) and pass features=FILE.npz with ids [N], image_feats [N, D], "
    "frame_feats [sum T, D] and frame_counts [N]"
)


@register
@dataclass
class VBenchI2VBackground(Task):
    """VBench-I2V i2v_background (vbench2_beta_i2v/i2v_background.py): the 0.4·max / 0.3·mean /
    0.3·min statistics of `i2v_score` on DreamSim embeddings of the conditioning image and every
    frame; the dimension is the mean over videos. DreamSim (Fu et al., arXiv:2306.09344) is not
    implemented here: read in ssundaram21/dreamsim (dreamsim/model.py, config.py of 0.1.0), its
    default is an ensemble of DINO ViT-B/16, CLIP ViT-B/16 and OpenCLIP ViT-B/16 with peft LoRA
    adapters (r 16 on qkv), embeddings concatenated, L2-normalised and mean-subtracted; its weights
    download at run time, VBench pins no dreamsim version, and the timm/open_clip backbone code it
    wraps was not read, so a port could not be checked. This task scores embeddings exported with
    the official package instead: `features` is an
    .npz with `ids` [N] (the video source's ids: file names for video_folder), `image_feats`
    [N, D], `frame_feats` [sum T, D] (the videos' frames in order) and `frame_counts` [N]. The
    statistics are exact; without the file the task refuses, saying what is missing."""

    name = "vbench_i2v_background"
    benchmark_dimension = (
        "vbench-i2v:i2v_background"  # benchmark:dimension (the coverage table, the generator's prompt list)
    )
    backend = "exact statistics on your DreamSim features (features=FILE.npz)"
    fidelity = "external"
    version = "1"
    accepts = ("video_source",)
    needs_lm = False
    main_metric = "i2v_background"
    summary = "VBench-I2V background consistency from DreamSim embeddings computed elsewhere (exact statistics)"
    smoke_args = {"features": "{dreamsim_features}"}  # the matrix test writes stand-in embeddings
    features: str = field(default="", metadata={"help": ".npz: ids, image_feats, frame_feats, frame_counts"})

    def run(self, ctx) -> TaskResult:
        if not self.features:
            raise UserError(MISSING)
        path = Path(self.features).expanduser()
        try:
            data = np.load(path)
            ids, img, frames, counts = list(data["ids"]), data["image_feats"], data["frame_feats"], data["frame_counts"]
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"{self.name}: cannot read {self.features}: {e}") from None
        if (
            len(ids) != len(img)
            or len(counts) != len(ids)
            or int(counts.sum()) != len(frames)
            or img.shape[1] != frames.shape[1]
        ):
            raise UserError(
                f"{self.name}: {self.features}: need ids [N], image_feats [N, D], frame_feats "
                f"[sum(frame_counts), D], frame_counts [N]; got {len(ids)} ids, {img.shape}, "
                f"{frames.shape}, counts summing to {int(counts.sum())}"
            )
        wanted = {r.id for m in ctx.methods for r in m.videos(ctx)}
        starts = np.concatenate([[0], np.cumsum(counts)])
        rows = []
        for k, vid in enumerate(ids):
            if str(vid) not in wanted:
                continue
            f = frames[starts[k] : starts[k + 1]]
            rows.append({"id": str(vid), "frames": len(f), "value": i2v_score(img[k], f) if len(f) >= 2 else None})
        kept = [r["value"] for r in rows if r["value"] is not None]
        if not kept:
            raise UserError(f"{self.name}: no id in {self.features} with at least 2 frames matches the source's videos")
        report_loaded(ctx, len(rows), [])
        return TaskResult(
            {self.main_metric: Metric.mean(kept, "higher", "score", "value")},
            rows,
            {"calibrated": True, "features_file": str(path), "backbone": "DreamSim (computed elsewhere)"},
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
