"""CLI fuzz (issues 9 and 21): 1,000 argument lists from a committed generator (cli_fuzz_cases, a
fixed seed) run through the CLI. Every list exits 0 (help, list, a gate that holds), exits 2 with one
`harness: error:` line (argparse: its usage, then one error line), or is accepted; never a
traceback; and nothing already written is touched: an existing results folder and an existing file
that lists point --out, --results, --baseline or --model at stay byte-identical.

Accepted lists stop where the expensive work would begin (models.load, the sweep's pool, zoo
training, the leaderboard server: each raises Reached), so each costs milliseconds and the property
covers validation. The hostile checkpoints (a malicious pickle, truncated safetensors, a FIFO as
weights) really load, so their errors are the real ones. The normal suite runs every 10th list; all
1,000 run under `make test-slow`, which writes the figures for docs/reliability.md."""

import contextlib
import hashlib
import io
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest

from harness import cli, models, sweep
from tests import cli_fuzz_cases
from tests.conftest import make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
ERROR_LINE = re.compile(r"^harness( [\w-]+)*: error: \S")


class Reached(Exception):
    """The arguments were accepted and the CLI went on to the expensive work."""


class Evil:
    def __reduce__(self):  # runs when unpickled by a loader that trusts the pickle
        return (os.system, ("touch pwned",))


def hostile_checkpoints(base: Path, good: Path) -> dict[str, Path]:
    """Copies of the checkpoint `good`: a malicious pickle, truncated safetensors, a FIFO as weights."""
    out = {}
    for name in ("evil", "trunc", "fifo"):
        folder = out[f"@{name}_model"] = base / name
        shutil.copytree(good, folder)
    (out["@evil_model"] / "model.safetensors").unlink()
    (out["@evil_model"] / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    weights = out["@trunc_model"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (out["@fifo_model"] / "model.safetensors").unlink()
    os.mkfifo(out["@fifo_model"] / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The paths the "@" words stand for; prepared once per module (the checkpoints take a second)."""
    base = tmp_path_factory.mktemp("fuzz")
    paths = {"@file": base / "file.txt", "@results": base / "results", "@empty": base / "empty", "@new": base / "new"}
    paths["@file"].write_text("keep me\n")
    shutil.copytree(ROOT / "results" / "passkey", paths["@results"] / "passkey")
    paths["@empty"].mkdir()
    for name, text in {
        "rules_bad": "default: [unclosed\n",
        "rules_neg": "default: {abs: -1}\n",
        "rules_alpha": "alpha: 2\n",
        "grid_ok": "task_args: {context_length: 64}\nruns:\n  - tasks: [needle]\n    methods: [baseline, yarn]\n",
        "grid_seed": "seeds: [-1]\nruns:\n  - tasks: [needle]\n    methods: [baseline]\n",
        "grid_bad": "tasks: [needle]\n",
    }.items():
        paths[f"@{name}"] = base / f"{name}.yaml"
        paths[f"@{name}"].write_text(text)
    paths.update(hostile_checkpoints(base / "models", Path(make_tiny_llama(base / "good"))))
    assert set(paths) == set(cli_fuzz_cases.PLACEHOLDERS)
    return base, paths


def _snapshot(paths: dict) -> dict[str, str]:
    out = {}
    for key in ("@file", "@results"):
        p = paths[key]
        for f in [p] if p.is_file() else sorted(p.rglob("*")):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "folder"
    return out


def _substitute(token: str, paths: dict) -> str:
    for key in sorted(paths, key=len, reverse=True):
        if token.startswith(key):
            return str(paths[key]) + token[len(key) :]
    return token


@pytest.fixture
def stopped(monkeypatch, world):
    """Expensive work raises Reached; the hostile checkpoints load for real (and fail)."""
    base, paths = world
    hostile = {str(paths[k]) for k in ("@evil_model", "@trunc_model", "@fifo_model")}
    real_load = models.load

    def load(spec, *a, **k):
        if spec in hostile:
            real_load(spec, *a, **k)
        raise Reached()

    def stop(*a, **k):
        raise Reached()

    monkeypatch.setattr(models, "load", load)
    for target, name in ((sweep, "run_local"), (sweep, "run_slurm"), (os, "execve")):
        monkeypatch.setattr(target, name, stop)
    monkeypatch.setattr("harness.zoo.build.train_and_save", stop)
    monkeypatch.setattr("harness.docsgen.run", stop)
    monkeypatch.chdir(base)  # a pickle that did run would leave ./pwned here
    return base, paths


def _problem(argv: list[str], code, err: str) -> str | None:
    """Why this outcome breaks the property, or None."""
    if "Traceback" in err or code not in (0, 2, "reached"):
        return f"exit {code}: {err[-600:]}"
    if code == 2:
        lines = err.strip().splitlines()
        if not lines:
            return "exit 2 without a message"
        if lines[0].startswith("harness: error:"):
            return None if len(lines) == 1 else f"{len(lines)} lines: {err[:600]}"
        if not (lines[0].startswith("usage:") and ERROR_LINE.match(lines[-1])):  # argparse: usage, one error line
            return f"not one error line: {err[:600]}"
    return None


def fuzz(indices, stopped) -> dict:
    base, paths = stopped
    all_cases = cli_fuzz_cases.cases()
    before = _snapshot(paths)
    codes, problems = {}, []
    for i in indices:
        argv = [_substitute(t, paths) for t in all_cases[i]]
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
                code = e.code
            except Reached:
                code = "reached"
            except Exception as e:  # the property's failure: a traceback
                code = f"traceback {e.__class__.__name__}"
                err.write(f"Traceback: {e!r}")
        codes[str(code)] = codes.get(str(code), 0) + 1
        why = _problem(argv, code, err.getvalue())
        if _snapshot(paths) != before:
            why = (why or "") + " changed an existing file or results folder"
            before = _snapshot(paths)
        if why:
            problems.append(f"case {i} {argv}: {why}")
    figures = {
        "cases": len(indices),
        "tracebacks": sum(n for c, n in codes.items() if c.startswith("traceback") or c not in ("0", "2", "reached")),
        "exit_0": codes.get("0", 0),
        "exit_2": codes.get("2", 0),
        "accepted": codes.get("reached", 0),
        "files_changed": sum("changed an existing" in p for p in problems),
        "problems": len(problems),
        "pickle_ran": (base / "pwned").exists(),
        "seed": cli_fuzz_cases.SEED,
    }
    assert not problems, "\n".join(problems[:20])
    assert not figures["pickle_ran"]
    return figures


def test_fuzz_every_tenth_case(stopped):
    figures = fuzz(range(0, 1000, 10), stopped)
    assert figures["exit_2"] > 50  # the lists do reach the validation


@pytest.mark.slow  # 1,000 lists, ~1-3 min on a loaded 2-core machine
def test_fuzz_all_1000_cases(stopped, reliability_report):
    figures = fuzz(range(1000), stopped)
    assert figures["cases"] == 1000
    reliability_report(
        "cli_fuzz",
        check="CLI fuzz: generated argument lists (hostile values per command, token soup)",
        cases=figures.pop("cases"),
        tracebacks=figures.pop("tracebacks"),
        lost=figures.pop("files_changed"),
        **figures,
    )
    assert figures["accepted"] > 20 and figures["exit_2"] > 500


def test_the_generator_is_deterministic_and_covers_the_issue():
    a, b = cli_fuzz_cases.cases(), cli_fuzz_cases.cases()
    assert a == b and len(a) == 1000
    flat = [" ".join(c) for c in a]
    for needle in (
        "factor=0",
        "factor=nan",
        "factor=inf",
        str(2**64),
        "-1",
        "@file",
        "@rules_neg",
        "tpu",
        "@evil_model",
    ):
        assert any(needle in c for c in flat), needle
