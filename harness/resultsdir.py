"""Scan a results folder that others may write to: every record, and every other file with the
reason it is not one. Shared by the leaderboard (which shows the skipped files) and the gate
(which refuses to compare a set with unreadable files).

Never hangs and never leaves the folder: symlinks (files or folders) are reported, never
followed; a FIFO, socket or device named *.json is never opened; a file over the size limit is
never read; a name that is not valid UTF-8 is reported with its bytes escaped; two records with
the same run id are both named (the later one skipped), since a duplicate could mask a result."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from harness import records

SIDECAR = ".samples.jsonl"
# reasons for files that are not records at all: expected in a results folder, not "unreadable"
NOT_RECORDS = ("temporary file", "foreign file")


@dataclass
class Scan:
    root: str
    found: list[tuple[str, str, dict]] = field(default_factory=list)  # (path, relative path, record)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def unreadable(self) -> list[tuple[str, str]]:
        """Skipped files that claim to be records (or hide what they are): all but temporaries
        of interrupted writes and foreign files."""
        return [(rel, why) for rel, why in self.skipped if not why.startswith(NOT_RECORDS)]


def printable(name: str) -> str:
    """A file name as text that can be printed anywhere: undecodable bytes as \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def candidates(root: str, prefix: str = ""):
    """(path, relative path, lstat, reason-or-None) for every entry under root; one lstat per
    entry (os.scandir). harness sweep's own .sweep logs are not entered."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        yield root, prefix or ".", None, f"unreadable: {e.strerror}"
        return
    for entry in entries:
        rel = prefix + printable(entry.name)
        if not _utf8(entry.name):
            yield entry.path, rel, None, "file name not UTF-8: never opened"
        elif entry.is_symlink():
            yield entry.path, rel, None, "symlink: not followed"
        elif entry.is_dir(follow_symlinks=False):
            if entry.name != ".sweep":
                yield from candidates(entry.path, rel + "/")
        elif entry.name.endswith(SIDECAR):
            continue  # read with its record
        elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
            yield entry.path, rel, None, "temporary file: an interrupted write (ignored)"
        elif not entry.name.endswith(".json"):
            yield entry.path, rel, None, "foreign file: not a record"
        else:
            yield entry.path, rel, entry.stat(follow_symlinks=False), None


def scan(root, check: Callable[[dict], str | None] | None = None) -> Scan:
    """Every record under root; `check(record)` returns a reason to skip a record whose fields
    have the wrong shape for the caller. Of two records with one run id the first (by path) is
    kept and the second skipped, its reason naming the first."""
    out = Scan(str(root))
    first: dict[str, str] = {}
    for path, rel, st, reason in candidates(str(root)):
        if reason is None:
            try:
                rec = records.read_untrusted(path, rel, st)
            except records.BadRecord as e:
                reason = str(e)
            else:
                reason = check(rec) if check else None
                rid = rec["run_id"] if isinstance(rec["run_id"], str) else records.canonical(rec["run_id"])
                if reason is None and rid in first:
                    reason = f"duplicate run id: {rid[:40]} is also in {first[rid]}"
                if reason is None:
                    first[rid] = rel
                    out.found.append((path, rel, rec))
                    continue
        out.skipped.append((rel, reason))
    return out
