"""Fit stages: methods that must be trained or searched first (LongRoPE's factor search, LongLoRA,
EAGLE heads, ...) store what they learn content-addressed, so `harness fit` runs once and every
`harness eval` of the same method, parameters, model and data reuses it. Records name the key.

Key = hash(method name, the parameters that shape the fit, the fit code's version, the model's
weights sha256, the fit data's hash, and the fit seed when it is not 0). Folder: $HARNESS_ARTIFACTS
or ~/.cache/harness/artifacts, one sub-folder per key holding meta.json (and whatever files the
method writes), made atomically (written to a temporary folder, then renamed). A task may cache
what it computes from a model the same way (math_prm_bon's sampled pools: `key` over the sampling
settings, model and data)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.records import canonical, sha256_text

ARTIFACTS_ENV = "HARNESS_ARTIFACTS"


def root() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV, Path.home() / ".cache" / "harness" / "artifacts"))


def key(fields: dict[str, Any]) -> str:
    """The content address of whatever `fields` (JSON-ready) say shapes an artifact."""
    return sha256_text(canonical(fields))[:16]


def key_for(method, lm, ctx, model_sha: str | None) -> str:
    """`ctx` is the fit's context (harness.fitting.fit_context): its seed is the fit seed."""
    fields = {
        "method": method.fit_name or method.name,
        "params": method.fit_params(lm, ctx),
        "fit_version": method.fit_version,
        "model": model_sha,
        "data": method.fit_data_hash(lm, ctx),
    }
    if ctx.seed:  # fit seed 0 adds nothing: every key made before fit seeds existed stays valid
        fields["fit_seed"] = ctx.seed
    return key(fields)


def folder(k: str) -> Path:
    return root() / k


def load(k: str) -> dict[str, Any] | None:
    try:
        return json.loads((folder(k) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def save(k: str, payload: dict[str, Any], write_files=None) -> Path:
    """Write meta.json (and files via write_files(tmp_folder)) into a new folder, then rename."""
    target = folder(k)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{k}."))
    try:
        if write_files:
            write_files(tmp)
        (tmp / "meta.json").write_text(json.dumps(dict(payload, key=k), indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
