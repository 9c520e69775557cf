"""A small results folder whose right answers are known, for the tests that check what the
leaderboard *means* (tests/test_leaderboard_meaning.py under AppTest, tests/test_leaderboard_browser.py
in Chromium). Every number below is chosen so that the answer can be worked out by hand:

needle on zoo:tiny-llama (higher is better, 100 needles per run, 0/1 per sample):
  yarn factor=4   seeds 0, 1, 2 at 0.88, 0.90, 0.92 -> ONE row, seeds = 3, mean 0.900
  pi              0.60                               -> its own row
  yarn factor=8   0.50                               -> its own row (a configuration, not a seed)
  baseline        0.20
  ranking: yarn (factor=4), pi, yarn (factor=8), baseline; pi's and yarn (factor=8)'s 95% intervals
  overlap (Wilson, n = 100: [0.50, 0.69] and [0.40, 0.60]), so ranks 2 and 3 are grey; 1 and 4
  are separated from every other row.
lat on model none (lower is better, milliseconds, 50 continuous per-sample values):
  b 1.0, c 2.0 (its parameter is spreadsheet-formula and HTML text), a 3.0 -> b, c, a; b against a
  on the same samples differs on every sample, so 10,000 paired bootstrap resamples never cross
  zero: the honest p is "p < 1/B = 0.0001", never "p = 0".
noise_prior on model none: on temporal_corr_error `fixed` scores 0 trivially (degenerate), so it is
  not ranked; pyoco_mixed (0.01) ranks first, independent (0.02) second.
kv_compression on zoo:tiny-llama: two methods on n = 2 samples each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.leaderboard_data import EVIL, metric, put, record

NEEDLE_PARAMS = {"context_length": [512, 1024]}
NEEDLE_ORDER = ["yarn (factor=4)", "pi", "yarn (factor=8)", "baseline"]
LAT_ORDER = ["b", "c", "a"]  # c has one configuration: its label is its name
FORMULA = '=HYPERLINK("http://evil.example","x")'
HOSTILE_NOTE = FORMULA + EVIL
NEEDLE_CONFIGS = [  # (method, method params, family, {seed: accuracy})
    ("yarn", {"factor": 4}, "rope", {0: 0.88, 1: 0.90, 2: 0.92}),
    ("yarn", {"factor": 8}, "rope", {0: 0.50}),
    ("pi", {"factor": 4}, "rope", {0: 0.60}),
    ("baseline", {}, "baseline", {0: 0.20}),
]
N = 100


def _binary(p: float, n: int = N, offset: int = 0) -> list[float]:
    k = round(p * n)
    return [1.0 if (i + offset) % n < k else 0.0 for i in range(n)]


def _stderr(vals: list[float]) -> float:
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))


def needle_record(method, mparams, family, seed, p):
    scores = _binary(p, offset=7 * seed)
    grid = [
        {"context_length": L, "depth": d, "n": 10, "accuracy": round(min(1.0, p + (0.1 if L == 512 else -0.1)), 2)}
        for L in (512, 1024)
        for d in (0.0, 50.0, 100.0)
    ]
    metrics = {
        "accuracy": dict(metric(p, unit="fraction", sample_field="score", n=N), stderr=_stderr(scores)),
        "accuracy@512": metric(min(1.0, p + 0.1), unit="fraction", n=N // 2),
        "accuracy@1024": metric(max(0.0, p - 0.1), unit="fraction", n=N // 2),
    }
    rec = record(
        "needle",
        method,
        metrics,
        "accuracy",
        family=family,
        params=NEEDLE_PARAMS,
        details={"grid": grid},
        seed=seed,
        method_params=mparams,
    )
    rec["model"]["label"] = "embedded zoo model (tiny reference model, not a real LLM)"
    samples = [{"id": f"s{i}", "score": s, "prediction": f"answer {i}"} for i, s in enumerate(scores)]
    return rec, samples


def known_results(root: Path) -> Path:
    for method, mparams, family, seeds in NEEDLE_CONFIGS:
        for seed, p in seeds.items():
            put(root, *needle_record(method, mparams, family, seed, p))
    for method, base, mparams in (("a", 3.0, {}), ("b", 1.0, {}), ("c", 2.0, {"note": HOSTILE_NOTE})):
        vals = [base + 0.2 * math.sin(i) for i in range(50)]
        m = dict(metric(sum(vals) / 50, "lower", "ms", sample_field="ms", n=50), stderr=_stderr(vals))
        put(
            root,
            record("lat", method, {"latency": m}, "latency", family="kv", model="none", method_params=mparams),
            [{"id": f"q{i}", "ms": v} for i, v in enumerate(vals)],
        )
    for method, warp, corr in (("fixed", 0.155, 0.0), ("independent", 0.2, 0.02), ("pyoco_mixed", 0.1, 0.01)):
        metrics = {
            "warp_coherence_error": metric(warp, "lower", "|coherence - ideal|", n=3),
            "temporal_corr_error": metric(corr, "lower", "mean |corr - analytic|", n=552),
        }
        put(
            root,
            record(
                "noise_prior", method, metrics, "warp_coherence_error", family="noise", kind="noise_prior", model="none"
            ),
        )
    for method, acc in (("snapkv", 0.5), ("h2o", 1.0)):
        put(
            root,
            record(
                "kv_compression",
                method,
                {
                    "needle_accuracy_at_memory": metric(acc, unit="fraction", n=2),
                    "kept_fraction": metric(0.25, "lower", n=2),
                },
                "needle_accuracy_at_memory",
                params={"context_length": 512},
                method_params={"budget": 0.25},
            ),
        )
    return root


@pytest.fixture
def known(tmp_path):
    return known_results(tmp_path / "known")


def total_records() -> int:
    return sum(len(s) for *_, s in NEEDLE_CONFIGS) + 3 + 3 + 2
