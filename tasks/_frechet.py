"""The Fréchet distance between Gaussians fitted to features, in float64."""

from __future__ import annotations

import numpy as np


def stats(feats: np.ndarray, biased: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, np.cov, as StyleGAN-V; biased ÷N as cd-fvd)."""
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False, bias=biased).reshape(f.shape[1], f.shape[1])


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((s1 s2)^{1/2}) in the symmetric form Tr((A s2 A)^{1/2}) with A = s1^{1/2}: both square
    roots via eigh of symmetric PSD matrices, negative round-off eigenvalues clipped to 0 — stable
    where a general sqrtm of the non-symmetric product can turn complex."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = a @ s2 @ a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||² + Tr(s1 + s2 - 2 (s1 s2)^{1/2}), clamped at 0.

    The true distance is never negative, but round-off is: the square roots of round-off
    eigenvalues (rank-deficient covariances, fewer clips than feature dimensions) add to the trace
    term, so identical feature sets can come out at -1e-6 or below. A negative result is reported
    as 0.0; the reference implementations (TF-GAN, scipy sqrtm) do not clamp and can print it."""
    d = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return max(0.0, float(d @ d + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2)))
