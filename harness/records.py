"""Result records: one JSON file per evaluated cell plus a per-sample JSONL sidecar.

Path: <out>/<task>/<model slug>/<method>/<run_id>.json, where run_id hashes the cell's canonical
config, so a rerun finds a finished cell and skips it.

The pair appears atomically to readers: the sidecar is named by its content hash
(<run_id>.<sha256[:16]>.samples.jsonl) and published first, then the record naming it (its
`samples_file` and `samples_sha256`) replaces the old one, so a reader that reads the record and
then the sidecar it names never mixes two writers' files; it can only find that sidecar already
superseded (gone), which readers treat as "not yet complete" and retry. Writers of one folder
publish under an flock of the folder and then delete the sidecars no record names any more.

Each file is first written to `.<name>.<host>.<pid>.<random>.tmp` and renamed; a killed writer
leaves its temporary behind, and the next write into that folder deletes the temporaries of this
host whose writer process is no longer alive (never a live writer's)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import Any

from harness.errors import UserError

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


_SIDE_SUFFIX = ".samples.jsonl"


def _sidecar_re(stem: str) -> re.Pattern:
    """The sidecar names a record <stem>.json may have: legacy <stem>.samples.jsonl or hashed."""
    return re.compile(re.escape(stem) + r"(\.[0-9a-f]{16})?" + re.escape(_SIDE_SUFFIX))


def samples_name(path: Path, digest: str) -> str:
    return f"{Path(path).stem}.{digest[:16]}{_SIDE_SUFFIX}"


def check_out_folder(out, flag: str = "--out") -> Path:
    """`out` as a Path when records can be written under it: it and every existing parent are
    folders (not files) and the nearest existing one is writable. Checked before any work, so a
    bad --out fails in a second rather than after the evaluation (UserError, exit 2)."""
    out = Path(out)
    for p in (out, *out.parents):
        if os.path.lexists(p):
            if not p.is_dir():
                raise UserError(f"{flag} {out}: {p} is a file, not a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise UserError(f"{flag} {out}: {p} is not writable")
            break
    return out


def samples_path(path: Path, rec: dict | None = None) -> Path:
    """The sidecar the record at `path` names (its `samples_file`, which must be a sibling of this
    record's own name pattern: a hostile record cannot point elsewhere); the legacy
    <stem>.samples.jsonl for a record that names none or cannot be read."""
    path = Path(path)
    if rec is None:
        try:
            rec = read(path)
        except ValueError:
            rec = {}
    name = rec.get("samples_file") if isinstance(rec, dict) else None
    if isinstance(name, str) and _sidecar_re(path.stem).fullmatch(name):
        return path.with_name(name)
    return path.with_name(path.stem + _SIDE_SUFFIX)


# temporaries made here are opened with mode 0666 less the umask, as an ordinary open() gives
# (records are shared results); the umask is read once, as os.umask can only be read by setting it
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TMP_RE = re.compile(r"\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we can judge: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # alive under another user (or unjudgeable): keep
    return True


def clean_stale_temps(folder: Path) -> list[str]:
    """Delete the temporaries in `folder` left by dead writers of this host (a killed run); a temp
    of a live process, of another host, or of an unknown naming is kept. Returns the names deleted."""
    gone = []
    try:
        names = os.listdir(folder)
    except OSError:
        return gone
    for name in names:
        m = _TMP_RE.fullmatch(name)
        if m and m["host"] == _HOST and not _pid_alive(int(m["pid"])):
            try:
                os.unlink(os.path.join(folder, name))
                gone.append(name)
            except OSError:
                pass
    return gone


def _write_temp(path: Path, data: bytes) -> str:
    """`data` in a fresh temporary next to `path` (fsynced); its name encodes this host and pid."""
    tmp = str(path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(path: Path, record: dict, samples: list[dict]) -> None:
    """Publish the sidecar (content-named) and then the record naming it; see the module doc."""
    path = Path(path)
    lines = "".join(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n" for s in samples).encode()
    digest = hashlib.sha256(lines).hexdigest()
    side = path.with_name(samples_name(path, digest))
    record = dict(record, samples_file=side.name, samples_sha256=digest)
    body = (json.dumps(record, indent=1, ensure_ascii=False, allow_nan=True) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    temps: list[str] = []
    try:
        temps.append(_write_temp(side, lines))
        temps.append(_write_temp(path, body))
        with _folder_lock(path.parent) as locked:
            os.replace(temps[0], side)
            os.replace(temps[1], path)
            temps = []
            pattern = _sidecar_re(path.stem)
            for name in os.listdir(path.parent) if locked else []:  # sidecars the record no longer names
                if name != side.name and pattern.fullmatch(name):
                    Path(path.parent, name).unlink(missing_ok=True)
    finally:
        for t in temps:
            Path(t).unlink(missing_ok=True)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive flock of the folder itself (no lock file left behind) while a writer renames
    its pair and deletes superseded sidecars, so it never deletes the sidecar another writer
    has just published for its own record. Yields whether the lock was taken: where the file
    system cannot lock a folder (some NFS mounts) the pair is still published in order, and the
    superseded sidecars are left (readers ignore a sidecar no record names)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def any_below(records: list[dict], metric: str, bound: float) -> bool:
    """Whether some record holds `metric` with a numeric value below `bound`: the one test behind
    "these records say the configuration is lossy" (the spec report's rows and the leaderboard's
    `unranked_below`); a record without the metric is not below."""
    for r in records:
        v = (r.get("metrics") or {}).get(metric)
        if isinstance(v, dict) and isinstance(v.get("value"), (int, float)) and v["value"] < bound:
            return True
    return False


def read(path: Path) -> dict:
    """A complete, valid record or ValueError naming what is wrong."""
    try:
        rec = json.loads(_read_regular(Path(path), MAX_RECORD_BYTES).decode("utf-8"))
    except (OSError, ValueError) as e:  # ValueError: also not UTF-8, not JSON, not a regular file
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
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever, a device never end
        raise BadRecord("not a regular file", "a FIFO, socket or device (never opened)")
    if st.st_size > MAX_RECORD_BYTES:
        raise BadRecord("too large", f"{st.st_size} bytes (limit {MAX_RECORD_BYTES})")
    try:
        data = _read_regular(path, MAX_RECORD_BYTES)
    except OSError as e:
        raise BadRecord("unreadable", e.strerror or str(e)) from None
    except ValueError as e:  # replaced by a link, a FIFO or a larger file since the lstat
        raise BadRecord("unreadable", str(e)) from None
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


MAX_SAMPLES_BYTES = 256 * 2**20


class Incomplete(ValueError):
    """A record whose sidecar is missing or does not hash to its samples_sha256: a write in
    progress, an interrupted one, or a tampered folder. Readers treat it as not yet complete."""


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file that is not a symlink, at most `limit` (else ValueError): a
    FIFO would block forever, /dev/zero never ends, and a link may point out of the folder."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"{Path(path).name}: a symlink (not followed)")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{Path(path).name}: not a regular file")
    if st.st_size > limit:
        raise ValueError(f"{Path(path).name}: {st.st_size} bytes, over the {limit}-byte limit")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{Path(path).name}: over the {limit}-byte limit")
    return data


def read_pair(path: Path, rec: dict | None = None, tries: int = 3) -> tuple[dict, list[dict]]:
    """(record, per-sample rows) of a complete pair: the sidecar the record names, hashing to its
    samples_sha256. A sidecar superseded between reading the record and opening it (a rewrite in
    progress) is retried with the new record; Incomplete when no consistent pair is found."""
    path = Path(path)
    problem = "no sidecar"
    for attempt in range(tries):
        if rec is None or attempt:
            rec = read(path)
        side = samples_path(path, rec)
        try:
            data = _read_regular(side, MAX_SAMPLES_BYTES)
        except FileNotFoundError:
            problem = f"{side.name}: missing"
            continue
        except OSError as e:
            raise ValueError(f"{side.name}: unreadable ({e.strerror or e})") from None
        want = rec.get("samples_sha256")
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            problem = f"{side.name}: does not match the record's samples_sha256"
            continue
        try:
            rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{side.name}: unreadable ({e.__class__.__name__})") from None
        return rec, rows
    raise Incomplete(f"{path}: not complete ({problem}: a write in progress or interrupted)")


def read_samples(path: Path, rec: dict | None = None) -> list[dict]:
    """The per-sample rows of the record at `path`, verified against its samples_sha256."""
    return read_pair(path, rec)[1]


def finished(path: Path, rid: str) -> bool:
    """A complete record of cell `rid`: valid, with the sidecar it names hashing as it says."""
    try:
        return read_pair(path)[0]["run_id"] == rid
    except ValueError:
        return False
