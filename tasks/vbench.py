"""The VBench aggregate: normalised dimension scores, Quality, Semantic, Total and the I2V scores."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from harness import params
from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.registry import register
from harness.tasks._vbench import (
    NORMALIZE,
    NORMALIZE_I2V,
    WEIGHT,
    aggregate_scores,
    outside_range,
    dynamic_frames,
    dynamic_rule,
    flicker_score,
    flow_magnitude,
    motion_smoothness,
    normalized,
    static_filter,
    top_mean,
)
from harness.video import collect, load_all

DIMENSIONS = tuple(NORMALIZE) + tuple(NORMALIZE_I2V)


def read_scores(path: str) -> dict[str, float]:
    """VBench's `*_eval_results.json` ({dim: [value, video_results]}) or a plain {dim: value}."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"vbench: cannot read scores file {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"vbench: {path} must hold a JSON object {{dimension: value}}")
    out = {}
    for dim, value in data.items():
        key = dim.strip().lower().replace(" ", "_")
        if key not in DIMENSIONS:
            raise UserError(f"vbench: unknown dimension {dim!r} in {path}; known: {', '.join(DIMENSIONS)}")
        out[key] = float(value[0] if isinstance(value, (list, tuple)) else value)
    return out


@register
@dataclass
class VBench(Task):
    """VBench's final scores (Vchitect/VBench scripts/constant.py, cal_final_score.py,
    cal_i2v_final_score.py): norm_d = (raw_d - Min_d)/(Max_d - Min_d)·w_d (w = 1, dynamic degree
    0.5); Quality = sum over the 7 quality dimensions / 6.5; Semantic = sum over the 9 semantic
    ones / 9; Total = (4·Quality + Semantic)/5; I2V = (0.1·camera + i2v_subject + i2v_background)/2.1;
    I2V quality = (subject + background + smoothness + aesthetic + imaging + 0.5·dynamic)/5.5;
    I2V total = (I2V quality + I2V)/2. Exact; each group is reported only when all its dimensions
    are present.

    Raw dimension values come from `scores` (VBench's *_eval_results.json or {dim: value}) and, with
    compute=true, from the cell's videos: temporal_flickering (exact) and, with proxies=true, the
    dynamic-degree and motion-smoothness proxies (then the record says calibrated: false), and
    `dimensions=a,b` runs those dimensions' own `vbench_<dimension>` tasks on the videos (with
    `weights_dir`; a random-init backbone under allow_uncalibrated makes the record calibrated:
    false). The
    main metric `available_score` is sum(norm_d)/sum(w_d) over the dimensions present: it equals
    no VBench score unless `coverage` says which groups are complete. Its unit names the
    dimensions it averages, each `raw@<dim>` says over how many videos (n), and the details count
    the videos read, the static ones (the only ones temporal_flickering scores) and the scored ones
    per dimension: an aggregate of one dimension over 2 videos shows as exactly that."""

    name = "vbench"
    version = "2"
    accepts = ("video_source",)
    needs_lm = False
    main_metric = "available_score"
    summary = "VBench aggregate: normalisation, Quality / Semantic / Total, I2V (exact)"
    smoke_args = {"proxies": "true"}
    scores: str = field(default="", metadata={"help": "JSON of raw dimension values (VBench eval_results format)"})
    compute: bool = field(default=True, metadata={"help": "compute temporal_flickering on the cell's videos"})
    proxies: bool = field(default=False, metadata={"help": "also compute the dynamic degree / smoothness proxies"})
    static_filter: bool = field(default=True, metadata={"help": "flickering on static videos only (VBench)"})
    dimensions: tuple[str, ...] = field(
        default=(),
        metadata={"help": "also compute these dimensions with their vbench_<dimension> tasks (backbone weights)"},
    )
    weights_dir: str = field(default="", metadata={"help": "weights folder of those dimension tasks"})
    allow_uncalibrated: bool = field(
        default=False, metadata={"help": "random-init backbones where weights are missing"}
    )

    def run(self, ctx) -> TaskResult:
        raw, source, rows, errors, counts = {}, {}, [], [], {}
        if self.scores:
            for dim, v in read_scores(self.scores).items():
                raw[dim], source[dim] = v, "scores file"
        if self.compute:
            loaded, errors = load_all(collect(ctx, ctx.limit), ctx, None, desc="vbench")
            flick, dyn, smooth = [], [], []
            for ref, frames in loaded:
                row = {
                    "id": ref.id,
                    "prompt": ref.prompt,
                    "input_hash": hashlib.sha256(frames.tobytes()).hexdigest()[:16],
                }
                static = static_filter(frames)[0]
                row["static"] = static
                if static or not self.static_filter:
                    row["temporal_flickering"] = flicker_score(frames)
                    flick.append(row["temporal_flickering"])
                if self.proxies:
                    f = dynamic_frames(frames, ref.fps)
                    mags = [top_mean(flow_magnitude(f[i], f[i + 1]), 0.05) for i in range(len(f) - 1)]
                    row["dynamic_degree_proxy"] = float(dynamic_rule(mags, f.shape[1], f.shape[2], len(f), ref.fps))
                    row["motion_smoothness_proxy"] = motion_smoothness(frames) if len(frames) >= 3 else None
                    dyn.append(row["dynamic_degree_proxy"])
                    if row["motion_smoothness_proxy"] is not None:
                        smooth.append(row["motion_smoothness_proxy"])
                rows.append(row)
            for dim, vals, label in (
                ("temporal_flickering", flick, "computed (exact)"),
                ("dynamic_degree", dyn, "computed (PROXY: Farneback flow instead of RAFT)"),
                ("motion_smoothness", smooth, "computed (PROXY: Farneback interpolation instead of AMT-S)"),
            ):
                if vals and dim not in raw:
                    raw[dim], source[dim], counts[dim] = sum(vals) / len(vals), label, len(vals)
        from harness.tasks._vbench_dims import compute_dimensions

        shared = {"weights_dir": self.weights_dir, "allow_uncalibrated": str(self.allow_uncalibrated).lower()}
        # a dimension's own task (its real backbone) takes precedence over a proxy, not over the scores file
        for dim, value, label in compute_dimensions(
            ctx, [d for d in self.dimensions if source.get(d) != "scores file"], shared
        ):
            raw[dim], source[dim] = value, label
            counts.pop(dim, None)
        if not raw:
            raise UserError(
                "vbench: no dimension values: give scores=FILE, or compute=true on videos "
                "with a static one (temporal_flickering is scored on static videos)"
            )
        metrics = {}
        for dim in sorted(raw):
            metrics[f"raw@{dim}"] = Metric(raw[dim], "higher", "raw", n=counts.get(dim))
            metrics[f"norm@{dim}"] = Metric(normalized(dim, raw[dim]), "higher", "normalised x weight")
        for key, value in aggregate_scores(raw).items():
            metrics[key] = Metric(value, "higher", "normalised")
        t2v = [d for d in raw if d in NORMALIZE]
        weights = sum(WEIGHT[d] for d in t2v) or 1.0
        metrics["available_score"] = Metric(
            sum(normalized(d, raw[d]) for d in t2v) / weights if t2v else float("nan"),
            "higher",
            f"weighted mean of the normalised dimensions present ({len(t2v)} of 16: {', '.join(sorted(t2v))})",
            n=len(t2v),
        )
        metrics["coverage"] = Metric(len(t2v) / len(NORMALIZE), "higher", "fraction of the 16 T2V dimensions")
        if not rows:
            rows = [{"id": dim, "raw": raw[dim], "source": source[dim]} for dim in sorted(raw)]
        details = {
            "calibrated": not any("PROXY" in s or "UNCALIBRATED" in s for s in source.values()),
            "sources": source,
            "unreadable": errors,
            "complete": sorted(k for k in aggregate_scores(raw)),
            "outside_range": outside_range(raw),  # normalised values clamped to [0, 1]
            "videos": {
                "read": sum(1 for r in rows if "static" in r),
                "static": sum(1 for r in rows if r.get("static")),
                "scored": counts,
            },
        }
        data_hash = hashlib.sha256(
            params.to_dict(self).__repr__().encode() + json.dumps(raw, sort_keys=True).encode()
        ).hexdigest()
        return TaskResult(metrics, rows, details, data_hash)
