"""Result records: one JSON file per evaluated cell plus a per-sample JSONL sidecar.

Path: <out>/<task>/<model slug>/<method>/<run_id>.json, where run_id hashes the cell's canonical
config, so a rerun finds a finished cell and skips it. Both files are written to a temporary
name and renamed; the sidecar first, so a record on disk always has its samples."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULTS_ENV = "HARNESS_RESULTS"
REQUIRED = ("schema_version", "run_id", "task", "method", "model", "metrics", "provenance")


def default_out() -> Path:
    return Path(os.environ.get(RESULTS_ENV, "results"))


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run_id(cell: dict) -> str:
    """Hash of what defines the cell: task + params, methods + params, model + weights, seed, limit."""
    return sha256_text(canonical(cell))[:16]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"


def record_path(out: Path, cell: dict, rid: str) -> Path:
    return out / slug(cell["task"]["name"]) / slug(cell["model"]["id"]) / slug(cell["method"]["name"]) / f"{rid}.json"


def samples_path(path: Path) -> Path:
    return path.with_name(path.stem + ".samples.jsonl")


# mkstemp makes files 0600; records are shared results, so they get the mode an ordinary open()
# would give (0666 less the umask), read once here because os.umask can only be read by setting it
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(path: Path, record: dict, samples: list[dict]) -> None:
    lines = "".join(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n" for s in samples).encode()
    record = dict(record, samples_file=samples_path(path).name, samples_sha256=hashlib.sha256(lines).hexdigest())
    _atomic_write(samples_path(path), lines)
    _atomic_write(path, (json.dumps(record, indent=1, ensure_ascii=False, allow_nan=True) + "\n").encode())


def read(path: Path) -> dict:
    """A complete, valid record or ValueError naming what is wrong."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON record ({e})") from None
    return validate(rec, path)


def validate(rec, path) -> dict:
    """The record itself when it has this schema version's required fields, else ValueError."""
    if not isinstance(rec, dict):
        raise ValueError(f"{path}: not a JSON object")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"{path}: missing fields {missing}")
    if rec["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {rec['schema_version']!r}, expected {SCHEMA_VERSION}")
    return rec


try:  # orjson parses ~3x faster (the leaderboard reads 10,000s of records)
    from orjson import loads as _fast_loads
except ImportError:
    _fast_loads = json.loads

MAX_RECORD_BYTES = 16 * 2**20  # a record is kilobytes; per-sample rows live in the sidecar


class BadRecord(ValueError):
    """A file that is not a valid record; `kind` names why (symlink, too large, binary, ...)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def read_untrusted(path, name: str | None = None, st: os.stat_result | None = None) -> dict:
    """A record from a folder others may write to: symlinks are refused (never followed), a file
    over MAX_RECORD_BYTES is refused unread, then it is decoded, parsed and validated. Raises
    BadRecord naming the problem; `name` is how the file is named in messages; `st` its lstat
    when the caller has it (a folder scan does)."""
    name = name or str(path)
    try:
        st = st or os.lstat(path)
    except OSError as e:
        raise BadRecord("unreadable", e.strerror or str(e)) from None
    if stat.S_ISLNK(st.st_mode):
        raise BadRecord("symlink", "not followed")
    if st.st_size > MAX_RECORD_BYTES:
        raise BadRecord("too large", f"{st.st_size} bytes (limit {MAX_RECORD_BYTES})")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD_BYTES + 1)
    except OSError as e:
        raise BadRecord("unreadable", e.strerror or str(e)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord("binary", "not UTF-8 text") from None
    try:
        rec = _fast_loads(data)
    except ValueError:  # also NaN, which records may hold and orjson refuses
        try:
            rec = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise BadRecord("not JSON", f"{e.__class__.__name__} (truncated or malformed)") from None
    try:
        return validate(rec, name)
    except ValueError as e:
        reason = str(e).removeprefix(f"{name}: ")
        raise BadRecord("schema version" if "schema_version" in reason else "not a record", reason) from None


def read_samples(path: Path) -> list[dict]:
    with open(samples_path(path), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def finished(path: Path, rid: str) -> bool:
    try:
        return read(path)["run_id"] == rid and samples_path(path).is_file()
    except ValueError:
        return False
