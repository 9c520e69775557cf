"""The CLI fuzz's argument lists (issue 21, item 3): `cases(n)` is deterministic (a fixed seed), so
a failing case is replayed by its index. Most lists follow one command's shape with hostile values
(near-miss names, out-of-range and non-finite parameters, seeds past 2**63 or negative, devices
that do not exist, --out at an existing file, malformed gate rules, unreadable or malicious
checkpoints); a fifth are token soup. Words starting with "@" stand for files the
test prepares and substitutes (see PLACEHOLDERS)."""

from __future__ import annotations

import random

SEED = 20260421
PLACEHOLDERS = {
    "@file": "an existing regular file (must stay byte-identical)",
    "@results": "an existing results folder (must stay byte-identical)",
    "@empty": "an empty folder",
    "@new": "a folder that does not exist yet",
    "@rules_bad": "a gate rules file that is not YAML",
    "@rules_neg": "gate rules with a negative tolerance",
    "@rules_alpha": "gate rules with alpha 2",
    "@grid_ok": "a valid grid (the sweep stops before running cells)",
    "@grid_seed": "a grid with a negative seed",
    "@grid_bad": "a grid with an unknown key",
    "@evil_model": "a checkpoint whose pickle runs code when loaded",
    "@trunc_model": "a checkpoint with truncated safetensors",
    "@fifo_model": "a checkpoint whose weights file is a FIFO",
}

TASKS = ["needle", "needle_2k", "needle_0k", "needle_-1k", "passkey", "perplexity", "nedle", "kv_compression", "+", ""]
METHODS = [
    "baseline",
    "yarn",
    "pi",
    "pi+yarn",
    "yarn+selfextend",
    "snapkv",
    "h2o",
    "sps",
    "+",
    "pi+",
    "alibi",
    "longrope",
    "nope",
    "kvpress:Nope",
    "yarn+yarn",
]
MODELS = [
    "zoo:tiny-llama",
    "zoo:nope",
    "hf:",
    "/nonexistent/model",
    "@evil_model",
    "@trunc_model",
    "@fifo_model",
    "@file",
]
METHOD_ARGS = [
    "factor=0",
    "factor=-1",
    "factor=nan",
    "factor=inf",
    "factor=-inf",
    "factor=1e400",
    "factor=0.5",
    "factor=2",
    "yarn.factor=0",
    "yarn.beta_fast=inf",
    "budget=0",
    "budget=1.5",
    "budget=-0.1",
    "budget=nan",
    "budget=0.5",
    "gamma=0",
    "gamma=-3",
    "window_size=-2",
    "window_size=0",
    "kernel_size=0",
    "n_sink=-1",
    "attn_factor=0",
    "alpha=0",
    "nothing.key=1",
    "=1",
    "k==v",
    "factor",
    "ünïcode=✓",
]
TASK_ARGS = [
    "context_length=512",
    "context_length=abc",
    "context_length=",
    "context_length=-5",
    "depths=-1",
    "depths=1",
    "samples_per_depth=0",
    "max_new_tokens=0",
    "variant=weird",
    "needle.depths=2",
    "x=\x00",
]
SEEDS = [
    "0",
    "7",
    "-1",
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    "-9223372036854775809",
    "99999999999999999999",
    "1e3",
    "x",
]
DEVICES = ["cpu", "auto", "cuda", "cuda:7", "tpu", "", "mps:x", "cuda:-1", "CPU"]
OUTS = ["@file", "@file/sub", "@new", "@results", "@empty", "/proc/self/nope"]
FOLDERS = ["@results", "@empty", "@file", "/nonexistent", "@new"]
RULES = ["@rules_bad", "@rules_neg", "@rules_alpha", "@file", "/nonexistent.yaml"]
NUMBERS = ["0", "-1", "1", "3", "1e9", "NaN", "abc", ""]
SOUP = ["--task", "--method", "--model", "--seed", "--out", "--device", "--limit", "-h", "--bogus", "--json", "list"]


def _pick(r: random.Random, items: list[str], k: int = 1) -> list[str]:
    return [r.choice(items) for _ in range(k)]


def _eval(r: random.Random, command: str) -> list[str]:
    argv = [command]
    for _ in range(r.randint(0 if command == "eval" else 1, 2)):
        argv += ["--method", r.choice(METHODS)] if command == "fit" or r.random() < 0.6 else ["--task", r.choice(TASKS)]
    if command == "eval" and "--task" not in argv and r.random() < 0.8:
        argv += ["--task", r.choice(TASKS[:6])]
    for flag, values, p in (
        ("--model", MODELS, 0.5),
        ("--method-arg", METHOD_ARGS, 0.7),
        ("--method-arg", METHOD_ARGS, 0.2),
        ("--task-arg", TASK_ARGS, 0.4),
        ("--seed", SEEDS, 0.4),
        ("--device", DEVICES, 0.3),
        ("--limit", NUMBERS, 0.15),
        ("--batch-size", NUMBERS + ["auto"], 0.1),
        ("--out", OUTS, 0.6 if command == "eval" else 0),
    ):
        if r.random() < p:
            argv += [flag, r.choice(values)]
    if r.random() < 0.3:
        argv.append("--allow-pickle")
    if r.random() < 0.1:
        argv.append("--overwrite")
    return argv


def _gate(r: random.Random) -> list[str]:
    argv = ["gate", "--baseline", r.choice(FOLDERS), "--current", r.choice(FOLDERS)]
    if r.random() < 0.6:
        argv += ["--rules", r.choice(RULES)]
    return argv


def _sweep(r: random.Random) -> list[str]:
    argv = ["sweep", r.choice(["@grid_ok", "@grid_seed", "@grid_bad", "@file", "/nonexistent.yaml"])]
    for flag, values, p in (
        ("--device", DEVICES, 0.5),
        ("--devices", ["0", "7", "abc", "0,1", ",", ""], 0.3),
        ("--out", OUTS, 0.6),
        ("--workers", NUMBERS, 0.2),
        ("--retries", NUMBERS, 0.1),
        ("--executor", ["local", "slurm", "k8s"], 0.2),
    ):
        if r.random() < p:
            argv += [flag, r.choice(values)]
    if r.random() < 0.3:
        argv.append("--dry-run")
    return argv


def _other(r: random.Random) -> list[str]:
    kind = r.choice(["list", "report", "zoo", "leaderboard"])
    if kind == "list":
        return ["list"] + _pick(r, ["tasks", "methods", "models", "all", "nope", "--json"], r.randint(0, 2))
    if kind == "report":
        return ["report", "--task", r.choice(TASKS), "--results", r.choice(FOLDERS)] + (
            ["--metric", r.choice(["accuracy", "nope", ""])] if r.random() < 0.3 else []
        )
    if kind == "zoo":
        sub = r.choice(["list", "card", "train", "nope"])
        return ["zoo", sub] + ([r.choice(["tiny-llama", "nope", "../x", ""])] if sub in ("card", "train") else [])
    return ["leaderboard", "--results", r.choice(FOLDERS), "--port", r.choice(NUMBERS)]


def _soup(r: random.Random) -> list[str]:
    pool = SOUP + TASKS + METHODS + METHOD_ARGS + SEEDS + OUTS + ["eval", "fit", "gate", "sweep", "evl"]
    argv = _pick(r, pool, r.randint(0, 8))
    if r.random() < 0.3:
        argv.append("".join(chr(r.randint(1, 0x2FFF)) for _ in range(r.randint(1, 12))))
    return argv


def cases(n: int = 1000, seed: int = SEED) -> list[list[str]]:
    r = random.Random(seed)
    makers = [
        (0.35, lambda: _eval(r, "eval")),
        (0.08, lambda: _eval(r, "fit")),
        (0.12, lambda: _gate(r)),
        (0.12, lambda: _sweep(r)),
        (0.13, lambda: _other(r)),
        (0.20, lambda: _soup(r)),
    ]
    out = []
    for _ in range(n):
        x, acc = r.random(), 0.0
        for weight, make in makers:
            acc += weight
            if x < acc:
                out.append(make())
                break
        else:
            out.append(_soup(r))
    return out
