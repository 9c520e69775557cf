"""Local backbone weights of the video tasks, named in one manifest (tasks/weights.toml: file, the
tasks that load it, the model and release, where to get it, the published sha256 or its prefix).
A task names manifest keys in `weight_files`; nothing is downloaded. A task that needs a network
looks for its file in the weights folder (task parameter `weights_dir`, else $HARNESS_VIDEO_WEIGHTS,
else ~/.cache/harness/video) and records the file's sha256. A file whose sha256 differs from the
published one is refused (exit 2) unless `weights_sha256` names the file's own sha256 (the user
vouches for it; then that value is checked instead). Without the file it refuses, unless
`allow_uncalibrated` (CLI --allow-uncalibrated) asks for a random-init network, whose numbers only
check the plumbing (record: calibrated false). `harness weights` prints the manifest against a
weights folder: found or not, sha256 ok / unknown / MISMATCH."""

from __future__ import annotations

import functools
import json
import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import UserError
from harness.models import file_sha256

MANIFEST = Path(__file__).with_name("weights.toml")


@dataclass(frozen=True)
class WeightsFile:
    """One manifest entry (tasks/weights.toml explains the fields)."""

    key: str
    file: str
    tasks: tuple[str, ...]
    model: str
    source: str
    sha256: str = ""
    sha256_prefix: str = ""
    note: str = ""

    @property
    def published(self) -> str:
        """The published hash in words, "" when none is published."""
        if self.sha256:
            return f"sha256 {self.sha256}"
        return f"a sha256 starting {self.sha256_prefix}" if self.sha256_prefix else ""

    def agrees(self, sha: str) -> bool | None:
        """True/False: `sha` agrees / disagrees with the published hash; None: none is published."""
        if self.sha256:
            return sha == self.sha256
        return sha.startswith(self.sha256_prefix) if self.sha256_prefix else None

    def where(self) -> str:
        return f"{self.model}; get it from {self.source}" + (f" ({self.note})" if self.note else "")


@functools.cache
def manifest() -> dict[str, WeightsFile]:
    """Key -> entry, in the file's order."""
    data = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    return {k: WeightsFile(key=k, **dict(v, tasks=tuple(v["tasks"]))) for k, v in data.items()}


def entry(key: str, task: str | None = None) -> WeightsFile:
    """The manifest entry `key`; with `task`, one the manifest says that task loads (a task asking
    for a file its entry does not list is a bug of the task or of the manifest)."""
    spec = manifest()[key]
    if task is not None and task not in spec.tasks:
        raise ValueError(f"{MANIFEST.name}: [{key}] does not list task {task} among its tasks {list(spec.tasks)}")
    return spec


def file_of(key: str) -> str:
    """The file name of manifest entry `key` (for the tasks' backend labels and messages)."""
    return manifest()[key].file


def weights_root(weights_dir: str) -> Path:
    return Path(weights_dir or os.environ.get("HARNESS_VIDEO_WEIGHTS") or "~/.cache/harness/video").expanduser()


def check_sha(task: str, path: Path, sha: str, spec: WeightsFile, user_sha: str) -> str:
    """How the file's sha256 was checked ("weights_sha256", "published", "none published"); raises
    UserError when it differs from the user's `weights_sha256` or, without that, the published one."""
    if user_sha:
        if sha != user_sha.lower():
            raise UserError(f"{task}: {path} has sha256 {sha}, expected {user_sha} (weights_sha256)")
        return "weights_sha256"
    agrees = spec.agrees(sha)
    if agrees is False:
        raise UserError(
            f"{task}: {path} has sha256 {sha}, but the published {spec.file} has {spec.published} "
            f"(get it from {spec.source}); to use this file anyway pass --task-arg weights_sha256={sha}"
        )
    return "none published" if agrees is None else "published"


def locate(task: str, weights_dir: str, key: str, user_sha: str, allow_uncalibrated: bool) -> tuple[Path | None, dict]:
    """(path or None for random init, provenance facts) of the manifest's file `key`. Raises
    UserError when the file is missing and random init was not allowed, or its sha256 is refused
    (check_sha)."""
    spec = entry(key, task)
    path = weights_root(weights_dir) / spec.file
    if path.is_file():
        sha = file_sha256(path)
        checked = check_sha(task, path, sha, spec, user_sha)
        return path, {"weights_file": str(path), "weights_sha256": sha, "sha256_checked": checked, "calibrated": True}
    if not allow_uncalibrated:
        raise UserError(
            f"{task} needs backbone weights: put {spec.file} in {path.parent} "
            f"(set weights_dir=DIR or $HARNESS_VIDEO_WEIGHTS): {spec.where()}. "
            f"Or pass --allow-uncalibrated for a random-init run (numbers meaningless, "
            f"record says calibrated: false); `harness weights` lists every file"
        )
    return None, {"weights_file": None, "weights_sha256": None, "calibrated": False}


# -- `harness weights` ---------------------------------------------------------------------------
def table(weights_dir: str) -> list[dict]:
    """One row per manifest entry against the weights folder: found, its sha256 and the verdict
    (ok / unknown / MISMATCH; "" when the file is missing)."""
    root, rows = weights_root(weights_dir), []
    for spec in manifest().values():
        path = root / spec.file
        found = path.is_file()
        sha = file_sha256(path) if found else None
        agrees = spec.agrees(sha) if found else None
        verdict = "" if not found else {True: "ok", False: "MISMATCH", None: "unknown"}[agrees]
        rows.append(
            dict(
                asdict(spec),
                tasks=list(spec.tasks),
                published=spec.published,
                path=str(path),
                found=found,
                file_sha256=sha,
                check=verdict,
            )
        )
    return rows


def cmd_weights(a) -> int:
    from harness.tables import format_table

    rows = table(a.weights_dir or "")
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"weights folder: {weights_root(a.weights_dir or '')}")
        print(
            format_table(
                ["file", "tasks", "found", "sha256", "get it from"],
                [
                    [r["file"], ", ".join(r["tasks"]), "yes" if r["found"] else "no", r["check"] or "-", r["source"]]
                    for r in rows
                ],
            )
        )
        print(
            "sha256: ok = the published hash (or its published prefix); unknown = none is published (the "
            "record keeps the file's own); MISMATCH = the tasks refuse the file unless weights_sha256= names it"
        )
        for r in rows:
            if r["check"] == "MISMATCH":
                print(f"MISMATCH: {r['path']} has sha256 {r['file_sha256']}; published: {r['published']}")
    return 1 if any(r["check"] == "MISMATCH" for r in rows) else 0


def add_command(sub) -> None:
    """Entry point (group harness.commands): `harness weights [--weights-dir DIR] [--json]`."""
    text = (
        "the backbone files the video tasks load (tasks/weights.toml): found in the weights folder or not, "
        "sha256 checked against the published hash; exit 1 when a file's sha256 mismatches"
    )
    p = sub.add_parser(
        "weights", help="list the video tasks' backbone files and check the weights folder", description=text
    )
    p.add_argument(
        "--weights-dir",
        default=None,
        metavar="DIR",
        help="the weights folder (default $HARNESS_VIDEO_WEIGHTS, else ~/.cache/harness/video)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (one object per file)")
    p.set_defaults(fn=cmd_weights)
