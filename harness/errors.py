"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A mistake in what the user asked for (name, parameter, file): never a traceback."""


class Refused(UserError):
    """A cell the model cannot run (a method needs what the model lacks, a prompt longer than its
    positions): one line and exit 2 in `harness eval`, a "refused" outcome in a sweep."""


def nearest(name: str, candidates, n: int = 3) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class NoEffect(Exception):
    """A method's own effect check failed after a run: the cell wrote no record (exit 1)."""
