"""The official VBench package, run in its own environment through a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.interfaces import Metric, Task, TaskResult
from harness.registry import register
from harness.video import collect, report_loaded

# VBench's custom_input mode refuses the dimensions that need per-prompt auxiliary info
CUSTOM_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
    "temporal_flickering",
    "overall_consistency",
    "temporal_style",
    "human_action",
)


@register
@dataclass
class VBenchOfficial(Task):
    """One VBench dimension computed by the official `vbench` package (Vchitect/VBench,
    arXiv:2311.17982) in custom-input mode, in a separate Python environment: `python` is that
    environment's interpreter (or $HARNESS_VBENCH_PYTHON). The package pins transformers 4.33 and
    numpy<2 and downloads its weights into ~/.cache/vbench unless they are already there, so it
    cannot live in the harness environment. The record names the backend "official vbench
    <version>" and keeps VBench's per-video results.

    The cell's video source must be a folder (video_folder) or is exported to a temporary one in
    VBench naming. dimension: one of the custom-input dimensions."""

    name = "vbench_official"
    version = "1"
    accepts = ("video_source",)
    needs_lm = False
    main_metric = "score"
    summary = "a VBench dimension by the official vbench package (separate environment, subprocess)"
    smoke_args = {"python": "{fake_vbench_python}", "dimension": "temporal_flickering"}
    dimension: str = field(default="subject_consistency", metadata={"help": ", ".join(CUSTOM_DIMENSIONS)})
    python: str = field(default="", metadata={"help": "interpreter of the env with vbench (or $HARNESS_VBENCH_PYTHON)"})
    device: str = field(default="cuda", metadata={"help": "device the official code runs on"})
    full_info: str = field(default="", metadata={"help": "VBench_full_info.json (optional in custom mode)"})
    timeout_s: int = field(default=7200, metadata={"help": "subprocess time limit"})

    def __post_init__(self):
        if self.dimension not in CUSTOM_DIMENSIONS:
            raise ValueError(f"dimension must be one of {', '.join(CUSTOM_DIMENSIONS)} (VBench custom input)")

    def run(self, ctx) -> TaskResult:
        python = interpreter(self.python or os.environ.get("HARNESS_VBENCH_PYTHON", ""))
        refs = collect(ctx, ctx.limit)
        with tempfile.TemporaryDirectory(prefix="harness-vbench-") as tmp:
            folder = {r.path and str(Path(r.path).parent) for r in refs}
            if len(folder) == 1 and None not in folder and not ctx.limit:
                videos = folder.pop()
            else:
                from harness.methods.video.synthetic import export_suite  # one writer of VBench naming

                videos = str(export_suite(Path(tmp) / "videos", refs, [self.dimension]).parent)
            report_loaded(ctx, len(refs), [])
            cmd = [
                python,
                str(Path(__file__).with_name("_vbench_official_driver.py")),
                "--videos",
                videos,
                "--dimension",
                self.dimension,
                "--out",
                str(Path(tmp) / "out"),
                "--device",
                self.device,
            ]
            if self.full_info:
                cmd += ["--full-info", self.full_info]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise UserError(f"vbench_official: the official vbench run exceeded {self.timeout_s} s") from None
            except OSError as e:  # e.g. an executable that is no program (exec format error)
                raise UserError(f"vbench_official: cannot run {python}: {e.strerror or e}") from None
            if proc.returncode != 0:
                raise UserError(
                    f"vbench_official: the official vbench run failed (exit {proc.returncode}): "
                    f"{proc.stderr.strip()[-800:]}"
                )
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            data = json.loads(Path(info["results"]).read_text())
        value, per_video = data[self.dimension]
        rows = []
        for i, v in enumerate(per_video if isinstance(per_video, list) else []):
            score = v.get("video_results") if isinstance(v, dict) else None
            rows.append(
                {
                    "id": f"{i}:{Path(v.get('video_path', str(i))).name}" if isinstance(v, dict) else str(i),
                    "value": float(score) if isinstance(score, (int, float, bool)) else None,
                }
            )
        if not rows:
            rows = [{"id": self.dimension, "value": float(value)}]
        metrics = {"score": Metric(float(value), "higher", f"VBench {self.dimension}", n=len(rows))}
        details = {"calibrated": True, "backend": f"official vbench {info.get('version')}", "dimension": self.dimension}
        data_hash = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
        return TaskResult(metrics, rows, details, data_hash)


def interpreter(python: str) -> str:
    """The path of an executable regular file (a bare name is looked up on PATH), else a UserError
    that says what is wrong with it: missing, a folder, or not executable."""
    need = (
        "vbench_official needs the interpreter of a separate environment with the official `vbench` "
        "package: python=/path/to/venv/bin/python or $HARNESS_VBENCH_PYTHON (see the README, "
        "'Video generation evaluation')"
    )
    if not python:
        raise UserError(need)
    path = Path(python) if os.sep in python else Path(shutil.which(python) or python)
    if not path.exists():
        problem = "does not exist"
    elif not path.is_file():
        problem = "is a folder" if path.is_dir() else "is not a regular file"
    elif not os.access(path, os.X_OK):
        problem = "is not executable"
    else:
        return str(path)
    raise UserError(f"vbench_official: python={python} {problem}; {need}")
