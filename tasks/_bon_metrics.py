"""Best-of-N estimators over one problem's pool of M solutions (anchors-prm §1.9).

- expected_argmax: the exact expectation, over uniform N-subsets drawn without replacement, of the
  correctness of the subset's highest-scored solution, ties broken uniformly at random. For a block
  of tied scores with `a` solutions scored strictly higher, the subset's maximum lies in the block
  with probability [C(M−a, N) − C(M−a−size, N)] / C(M, N); given that, the pick is uniform among
  the block's members in the subset, so its correctness is the block's mean.
- pass_at: the unbiased pass@N = 1 − C(M−c, N)/C(M, N).
- vote: Monte Carlo over subsets (one seeded draw per problem, N and trial, independent of the
  method so every method sees the same subsets): the answer class with the largest count (or sum
  of weights) wins; tied winning classes count with their mean correctness; a subset with no
  answer is wrong.
N larger than a problem's pool uses the whole pool (pools may differ in size)."""

from __future__ import annotations

import hashlib
from math import comb

import numpy as np


def n_grid(m: int) -> list[int]:
    """1, 2, 4, ... up to m, and m itself."""
    out, n = [], 1
    while n < m:
        out.append(n)
        n *= 2
    return out + [m]


def _ratio(a: int, b: int, n: int) -> float:
    """C(a, n) / C(b, n) exactly (integers), as a float."""
    if n > a:
        return 0.0
    return comb(a, n) / comb(b, n) if b < 1000 else float(np.exp(_lcomb(a, n) - _lcomb(b, n)))


def _lcomb(a: int, n: int) -> float:
    from math import lgamma

    return lgamma(a + 1) - lgamma(n + 1) - lgamma(a - n + 1)


def expected_argmax(scores, correct, n: int) -> float:
    scores = np.asarray(scores, dtype=float)
    correct = np.asarray(correct, dtype=float)
    m = len(scores)
    n = min(n, m)
    if m == 0:
        return 0.0
    total, above = 0.0, 0
    for value in sorted(set(scores.tolist()), reverse=True):
        block = scores == value
        size = int(block.sum())
        p = _ratio(m - above, m, n) - _ratio(m - above - size, m, n)
        total += p * float(correct[block].mean())
        above += size
    return total


def pass_at(n_correct: int, m: int, n: int) -> float:
    n = min(n, m)
    if m == 0:
        return 0.0
    return 1.0 - _ratio(m - n_correct, m, n)


def subset_seed(seed: int, problem_id: str, n: int) -> int:
    h = hashlib.sha256(f"{seed}|{problem_id}|{n}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def subsets(m: int, n: int, trials: int, seed: int) -> np.ndarray:
    """(trials, min(n, m)) index array: each row a uniform subset drawn without replacement."""
    rng = np.random.default_rng(seed)
    n = min(n, m)
    if n == m:
        return np.tile(np.arange(m), (trials, 1))
    return np.argsort(rng.random((trials, m)), axis=1)[:, :n]


def vote(classes, class_correct, weights, idx: np.ndarray) -> np.ndarray:
    """Per trial (row of idx): correctness of the class with the largest total weight among the
    subset's valid answers (classes >= 0); ties average the tied classes' correctness."""
    classes = np.asarray(classes)
    cc = np.asarray(class_correct, dtype=float)
    k = len(cc)
    if k == 0 or not (classes >= 0).any():
        return np.zeros(idx.shape[0])
    w = np.asarray(weights, dtype=float)
    sub_cls, sub_w = classes[idx], w[idx]
    totals = np.zeros((idx.shape[0], k))
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    valid = sub_cls.ravel() >= 0
    np.add.at(totals, (rows[valid], sub_cls.ravel()[valid]), sub_w.ravel()[valid])
    present = np.zeros((idx.shape[0], k), dtype=bool)
    present[rows[valid], sub_cls.ravel()[valid]] = True
    totals = np.where(present, totals, -np.inf)
    best = totals.max(axis=1, keepdims=True)
    winners = present & np.isclose(totals, best, rtol=1e-12, atol=1e-12)
    out = (winners * cc).sum(axis=1) / np.maximum(winners.sum(axis=1), 1)
    return np.where(present.any(axis=1), out, 0.0)


def bootstrap_interval(values, reps: int, seed: int, level: float = 0.95) -> list[float]:
    """Percentile interval of the mean over problems resampled with replacement."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2 or reps < 1:
        return [float(v.mean()) if len(v) else float("nan")] * 2
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(reps, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]
