"""Property-based CLI fuzz (issue 9): over 1,000 generated argument lists and parameter values,
every user error exits 2 with a one-line message and never a traceback, and no record is written.

Arguments that the CLI accepts reach model loading; there the fuzz stops them (a sentinel
exception), so each example costs milliseconds and the property covers validation only — the
evaluation itself is covered by the other tests."""

import contextlib
import re
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import cli, models

COMMANDS = ["eval", "fit", "list", "gate", "report", "zoo", "evl", ""]
FLAGS = [
    "--task",
    "--method",
    "--task-arg",
    "--method-arg",
    "--limit",
    "--seed",
    "--device",
    "--batch-size",
    "--model",
    "--baseline",
    "--current",
    "--rules",
    "--metric",
    "--overwrite",
    "--json",
    "-h",
    "--bogus",
]
VALUES = [
    "needle",
    "needle_2k",
    "needle_0k",
    "needle_-1k",
    "passkey",
    "perplexity",
    "nedle",
    "baseline",
    "yarn",
    "pi+yarn",
    "yarn+selfextend",
    "+",
    "pi+",
    "sps",
    "selfextend",
    "alibi",
    "longrope",
    "zoo:tiny-llama",
    "zoo:nope",
    "hf:",
    "/nonexistent/model",
    "cpu",
    "cuda:7",
    "tpu",
    "auto",
    "0",
    "-3",
    "1e9",
    "NaN",
    "3",
    "context_length=512",
    "context_length=abc",
    "context_length=",
    "depths=-1",
    "factor=0.5",
    "factor=x",
    "needle.depths=2",
    "nothing.key=1",
    "=1",
    "k==v",
    "variant=weird",
    "max_new_tokens=0",
    "samples_per_depth=1",
    "gamma=0",
    "window_size=-2",
    "ünïcode=✓",
    "\x00",
    "a" * 300,
    "list",
    "methods",
]
token = st.one_of(
    st.sampled_from(FLAGS),
    st.sampled_from(VALUES),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)


class Reached(Exception):
    """The arguments were accepted and the CLI went on to load a model."""


@pytest.fixture
def no_models(monkeypatch):
    def refuse(*a, **k):
        raise Reached()

    monkeypatch.setattr(models, "load", refuse)


@settings(max_examples=1100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS), rest=st.lists(token, max_size=8))
def test_fuzzed_arguments_never_traceback(no_models, tmp_path, command, rest):
    out = tmp_path / "out"
    argv = ([command] if command else []) + rest
    if command in ("eval", "fit"):
        argv += ["--out", str(out)] if command == "eval" else []
    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
            code = e.code
        except Reached:
            code = None
    assert code in (0, 2, None), (argv, code, err.getvalue()[-500:])
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text[-800:])
    if code == 2:
        assert text.strip(), f"exit 2 without a message: {argv}"
        # our errors are one "harness: error:" line; argparse prints its usage line first
        assert text.lstrip().startswith(("harness: error:", "usage:")), (argv, text[:300])
        assert re.search(r"^harness( \w+)?: error:", text, re.M), (argv, text[:300])
    if code != 0 or command != "eval":
        assert not list(out.rglob("*.json")), f"a record was written for {argv}"
