"""Local backbone weights of the video tasks. Nothing is downloaded: a task that needs a network
looks for its file in the weights folder (task parameter `weights_dir`, else $HARNESS_VIDEO_WEIGHTS,
else ~/.cache/harness/video), records the file's sha256 and checks it against `weights_sha256`
when given. Without the file it refuses, unless `allow_uncalibrated` (CLI --allow-uncalibrated)
asks for a random-init network, whose numbers only check the plumbing (record: calibrated false)."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UserError
from harness.models import file_sha256


def weights_root(weights_dir: str) -> Path:
    return Path(weights_dir or os.environ.get("HARNESS_VIDEO_WEIGHTS") or "~/.cache/harness/video").expanduser()


def locate(
    task: str, weights_dir: str, filename: str, expected_sha: str, allow_uncalibrated: bool, where_to_get: str
) -> tuple[Path | None, dict]:
    """(path or None for random init, provenance facts). Raises UserError when the file is missing
    and random init was not allowed, or its checksum differs from `expected_sha`."""
    path = weights_root(weights_dir) / filename
    if path.is_file():
        sha = file_sha256(path)
        if expected_sha and sha != expected_sha.lower():
            raise UserError(f"{task}: {path} has sha256 {sha}, expected {expected_sha}")
        return path, {"weights_file": str(path), "weights_sha256": sha, "calibrated": True}
    if not allow_uncalibrated:
        raise UserError(
            f"{task} needs backbone weights: put {filename} in {path.parent} "
            f"(set weights_dir=DIR or $HARNESS_VIDEO_WEIGHTS); {where_to_get}. "
            f"Or pass --allow-uncalibrated for a random-init run (numbers meaningless, "
            f"record says calibrated: false)"
        )
    return None, {"weights_file": None, "weights_sha256": None, "calibrated": False}
