"""Resumable cells: the generation batches a cell has finished, kept on disk so that a run killed
part-way (a 128k needle cell is over an hour on a CPU) resumes where it stopped, as lm-eval's
request cache does.

The journal is `<run_id>.partial` beside the cell's record. Its first line says what made it (run
id, git commit, library versions, device, threads); every further line is one finished batch: a key
hashing the batch's prompts and generation settings, the generated rows, the LM telemetry the batch
added and the seconds it took. A rerun of the same cell from the same clean commit in the same
environment replays the batches whose key it finds instead of computing them, so its record holds
the same outputs, metrics and telemetry as an uninterrupted run; its provenance adds
`resumed_batches` and `resumed_seconds` (included in `wall_time_s`), and its peak memory is the
largest of all attempts. The journal is deleted once the record is written.

Nothing is journaled where replaying could change a result:
- a tree with uncommitted changes, or no git commit (the code that made a batch cannot be checked);
- a batch run through an LM batch hook or a KV-cache policy (KV-cache, speculative-decoding and
  merging methods keep statistics in their own state, which a replay would not restore);
- sampling without a seed (a replay would shift the random stream of the batches after it).
A journal of another commit or environment is ignored and replaced; a line cut short by a kill is
dropped."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

# what must be equal for a journaled batch to be what this run would compute
IDENTITY = ("run_id", "git_commit", "harness_version", "torch", "transformers", "device", "threads")
MEMORY = ("max_rss_bytes", "peak_gpu_mem_bytes")


def path_for(record_path: Path) -> Path:
    return Path(record_path).with_suffix(".partial")


def batch_key(prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, seed) -> str:
    text = json.dumps([prompts, max_new_tokens, temperature, top_p, seed], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Journal:
    """The journal of one cell; `lm.journal` while the cell runs (harness.runner)."""

    def __init__(self, path: Path, identity: dict, peak_memory=lambda: {}):
        self.path = Path(path)
        self.identity = {k: identity.get(k) for k in IDENTITY}
        self.peak_memory = peak_memory  # () -> this attempt's peak memory fields so far
        self.found: dict[str, dict] = {}  # key -> entry, from earlier attempts
        self.replayed: list[dict] = []
        self.note = ""  # what opening found, for the log
        self._load()
        self._file = None

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    def _load(self) -> None:
        self._tmp.unlink(missing_ok=True)  # a rewrite a kill interrupted (the journal itself is intact)
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as e:
            self.note = f"unreadable journal {self.path} ({e}); starting over"
            return
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                break  # a kill cut the last line short; nothing after it was ever written
        if not entries or entries[0].get("journal") != self.identity:
            self.note = f"journal {self.path} was written by another commit or environment; starting over"
            return
        self.found = {e["key"]: e for e in entries[1:] if isinstance(e, dict) and "key" in e}
        if self.found:
            self.note = f"resuming: {len(self.found)} batch(es) finished by an earlier attempt ({self.path.name})"

    def batch_size(self) -> int | None:
        """The batch size of the earlier attempt (its largest batch), None when nothing was found."""
        return max((len(e["rows"]) for e in self.found.values()), default=None)

    def take(self, key: str) -> dict | None:
        """The journaled entry of a batch (rows, telemetry, seconds), or None."""
        entry = self.found.get(key)
        if entry is not None:
            self.replayed.append(entry)
        return entry

    def add(self, key: str, rows: list[list[int]], telemetry: Counter, seconds: float) -> None:
        if self._file is None:  # the first new batch rewrites the file: earlier entries, then this
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps({"journal": self.identity}) + "\n")
                for entry in self.found.values():
                    f.write(json.dumps(entry) + "\n")
            os.replace(self._tmp, self.path)
            self._file = open(self.path, "a", encoding="utf-8")
        memory = {k: v for k, v in self.peak_memory().items() if k in MEMORY}
        entry = {"key": key, "rows": rows, "telemetry": dict(telemetry), "seconds": round(seconds, 3), **memory}
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, finished: bool) -> None:
        """Close the file; a finished cell's journal is deleted (its record now holds everything)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if finished:
            self.path.unlink(missing_ok=True)
            self._tmp.unlink(missing_ok=True)


def timing(replayed: list[dict], wall: float, memory: dict) -> dict:
    """The record's wall_time_s and peak memory fields, with the earlier attempts' replayed batches."""
    if not replayed:
        return {"wall_time_s": round(wall, 3), **memory}
    earlier = sum(e["seconds"] for e in replayed)
    peaks = {k: max([memory[k], *(e[k] for e in replayed if k in e)]) for k in MEMORY if k in memory}
    return {
        "wall_time_s": round(wall + earlier, 3),
        **memory,
        **peaks,
        "resumed_batches": len(replayed),
        "resumed_seconds": round(earlier, 3),
    }


def open_for(record_path: Path, identity: dict, peak_memory, fresh: bool = False) -> Journal | None:
    """The cell's journal, or None where journaling could not be trusted (uncommitted changes, no
    commit). fresh: ignore an earlier attempt's journal (--overwrite)."""
    if identity.get("git_dirty") is not False or not identity.get("git_commit"):
        return None
    path = path_for(record_path)
    if fresh:
        path.unlink(missing_ok=True)
    return Journal(path, identity, peak_memory)


def replayable(lm, temperature: float, seed) -> bool:
    """Whether a batch's result is all the cell keeps from it (see the module doc)."""
    plain = lm.generate_batch_hook is None and lm.forward_logits_hook is None and lm.kv_policy is None
    return plain and (temperature == 0 or seed is not None)
