"""Statistics of a video noise prior, against the analytic values, without a diffusion model."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from harness import report
from harness.interfaces import Metric, Task, TaskResult
from harness.registry import register

MOTIONS = ("translate", "rotate", "zoom")


def motion_flow(motion: str, speed: float, h: int, w: int) -> torch.Tensor:
    """Backward flow [H, W, 2] of one frame step of an affine motion whose edge speed is `speed`
    pixels per frame: target pixel (x, y) of frame t+1 comes from (x, y) + flow in frame t."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    if motion == "translate":
        sx, sy = xs - speed, ys - speed / 2
    elif motion == "rotate":
        th = speed / (min(h, w) / 2)
        dx, dy = xs - cx, ys - cy
        sx, sy = cx + math.cos(th) * dx + math.sin(th) * dy, cy - math.sin(th) * dx + math.cos(th) * dy
    elif motion == "zoom":
        z = 1 + speed / (min(h, w) / 2)
        sx, sy = cx + (xs - cx) / z, cy + (ys - cy) / z
    else:
        raise ValueError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    return torch.stack([sx - xs, sy - ys], -1).float()


def overlap_weights(flow: torch.Tensor, k: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground truth of an area-preserving warp: the fraction a[p, q] of target pixel p's area that
    maps into source pixel q, by k x k supersampling of the (affine) backward map. Returns
    (p, q, a) for the nonzero entries and the mask of target pixels whose whole area lands inside
    the source frame."""
    h, w, _ = flow.shape
    off = (torch.arange(k, dtype=torch.float32) + 0.5) / k - 0.5
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    px = xs[..., None] + ox.flatten()
    py = ys[..., None] + oy.flatten()
    grid = torch.stack([(px + 0.5) / w * 2 - 1, (py + 0.5) / h * 2 - 1], -1).reshape(1, h, w * k * k, 2)
    f = torch.nn.functional.grid_sample(
        flow.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    sx = (px.reshape(h, -1) + f[0]).reshape(h, w, -1)
    sy = (py.reshape(h, -1) + f[1]).reshape(h, w, -1)
    qx, qy = torch.floor(sx + 0.5).long(), torch.floor(sy + 0.5).long()
    ok = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
    inside = ok.all(-1).flatten()
    rows = torch.arange(h * w).repeat_interleave(k * k)[ok.flatten()]
    cols = (qy * w + qx).flatten()[ok.flatten()]
    pairs, counts = torch.unique(rows * (h * w) + cols, return_counts=True)
    return pairs // (h * w), pairs % (h * w), counts.double() / (k * k), inside


def anderson_darling(x: np.ndarray) -> float:
    """A² of the sample against the fully specified N(0, 1) (not the composite test of
    scipy.stats.anderson, which estimates mean and variance first)."""
    from scipy.special import log_ndtr

    z = np.sort(x.astype(np.float64))
    n = len(z)
    i = np.arange(1, n + 1)
    return float(-n - np.mean((2 * i - 1) * (log_ndtr(z) + log_ndtr(-z[::-1]))))


def frame_stats(x: np.ndarray, subsample: int) -> dict:
    from scipy import stats

    v = x.ravel().astype(np.float64)
    sub = v[:: max(1, len(v) // subsample)][:subsample]
    ks = stats.kstest(sub, "norm")
    return {
        "mean": float(v.mean()),
        "var": float(v.var()),
        "skew": float(stats.skew(v)),
        "excess_kurtosis": float(stats.kurtosis(v)),
        "ks_stat": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "ad_stat": anderson_darling(sub),
    }


def spatial_whiteness(x: torch.Tensor) -> dict:
    """x [..., H, W]: lag-1 autocorrelation along x and y, and the flatness (geometric / arithmetic
    mean) of the power spectrum averaged over all frames, without DC. White noise: 0, 0, ~1."""
    x = x.double().flatten(0, -3)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    var = (x * x).mean()
    cx = float((x[..., :, 1:] * x[..., :, :-1]).mean() / var)
    cy = float((x[..., 1:, :] * x[..., :-1, :]).mean() / var)
    p = (torch.fft.fft2(x).abs() ** 2).mean(0).flatten()[1:]
    return {
        "spatial_corr_x": cx,
        "spatial_corr_y": cy,
        "psd_flatness": float(torch.exp(torch.log(p).mean()) / p.mean()),
    }


def corr_matrix(x: torch.Tensor) -> torch.Tensor:
    """Temporal correlation matrix [F, F] of x [F, ...], pooled over every other axis."""
    v = x.flatten(1).double()
    v = v - v.mean(1, keepdim=True)
    c = v @ v.T
    d = c.diagonal().clamp_min(1e-300).sqrt()
    return c / d[:, None] / d[None, :]


def alpha_bars(T: int) -> torch.Tensor:
    """The "linear" latent-diffusion schedule of VideoCrafter / DynamiCrafter (beta from 0.00085 to
    0.012 on a square-root scale); index t = 0..T, with alpha_bar(0) = 1."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def gaussian_kl(m0, v0, m1, v1) -> float:
    """KL(N(m0, v0) || N(m1, v1)), elementwise, averaged."""
    return float((0.5 * (torch.log(v1 / v0) + (v0 + (m0 - m1) ** 2) / v1 - 1)).mean())


@register
@dataclass
class NoisePriorTask(Task):
    """Statistics of a video noise prior (methods of kind noise_prior), all against analytic values:
    per-frame Gaussianity (moments, Kolmogorov-Smirnov and Anderson-Darling against N(0, 1)),
    spatial whiteness (lag-1 autocorrelation, power-spectrum flatness), the temporal correlation
    matrix at a fixed pixel against the prior's analytic one (static scene), warping fidelity on
    synthetic affine motions with known ground truth, and an exact linear-denoiser toy: Gaussian
    "videos" with AR(1) temporal covariance, whose optimal denoiser is linear, sampled by DDIM
    from each prior's noise, showing how the prior changes the output's temporal correlation.

    Ranking: statistics with a target are scored as their distance to it (lower is better), never
    as "higher": `warp_coherence_error` = |coherence − ideal| (the main metric: how exactly a prior
    transports noise along a known motion; a prior that ignores motion, fixed or independent, cannot
    win it), `toy_lag1_error` = |lag-1 corr of the toy output − ρ|, `toy_var_error` = |var ratio − 1|.
    `temporal_corr_error` checks each prior against its *own* analytic matrix: a correctness check
    that degenerate priors pass trivially (fixed noise: all ones, error 0), not a ranking. The raw
    lag-1 correlations and coherences are in the details and per-motion rows.

    Prior protocol: draw(shape, generator, flows) -> [F, C, H, W]; expected_corr(F);
    start_fraction and initial_latent(eps, alpha_bar, mean, var); denoise(x, fn)."""

    name = "noise_prior"
    version = "2"
    accepts = ("noise_prior",)
    needs_lm = False
    main_metric = "warp_coherence_error"
    summary = "noise-prior statistics vs analytic values: Gaussianity, whiteness, temporal corr, warping, toy DDIM"
    smoke_args = {"frames": "6", "samples": "2", "height": "12", "width": "12", "toy_steps": "5"}
    frames: int = field(default=24, metadata={"help": "frames per noise video"})
    channels: int = field(default=4, metadata={"help": "latent channels"})
    height: int = 32
    width: int = 32
    samples: int = field(default=8, metadata={"help": "noise videos (pooled for the statistics)"})
    motions: tuple[str, ...] = field(default=MOTIONS, metadata={"help": "synthetic motions for the warping metrics"})
    speed: float = field(default=0.5, metadata={"help": "edge speed of the motions, pixels per frame"})
    stat_subsample: int = field(default=2000, metadata={"help": "values per frame for the KS/AD tests"})
    toy_rho: float = field(default=0.9, metadata={"help": "lag-1 temporal correlation of the toy data"})
    toy_mean: float = field(default=0.5, metadata={"help": "mean of the toy data"})
    toy_var: float = field(default=0.25, metadata={"help": "variance of the toy data"})
    toy_steps: int = field(default=50, metadata={"help": "DDIM steps of the toy sampler"})
    diffusion_steps: int = field(default=1000, metadata={"help": "T of the toy's noise schedule"})

    REPORT_METRICS = (
        "warp_coherence_error",
        "warp_var_error",
        "temporal_corr_error",
        "ks_stat",
        "spatial_corr",
        "toy_corr_error",
        "toy_lag1_error",
        "toy_var_error",
        "toy_init_kl",
    )

    @classmethod
    def report(cls, recs: list[dict]) -> str:
        """A row per prior: temporal correlation error, Gaussianity and whiteness, warping
        fidelity and the linear-denoiser toy (the metrics of the task's docstring)."""
        return report.records_table(recs, list(cls.REPORT_METRICS))

    def __post_init__(self):
        if min(self.frames, self.channels, self.height, self.width, self.samples, self.toy_steps) < 1:
            raise ValueError("frames, channels, height, width, samples and toy_steps must be positive")
        if self.frames < 2:
            raise ValueError("frames must be at least 2 (temporal statistics)")
        for m in self.motions:
            if m not in MOTIONS:
                raise ValueError(f"unknown motion {m!r}; choose from {', '.join(MOTIONS)}")
        if not -1 < self.toy_rho < 1 or self.toy_var <= 0:
            raise ValueError("toy_rho must be in (-1, 1) and toy_var positive")

    def run(self, ctx) -> TaskResult:
        (prior,) = ctx.methods
        gen = torch.Generator().manual_seed(ctx.seed)
        F, C, H, W, S = self.frames, self.channels, self.height, self.width, self.samples
        shape = (F, S * C, H, W)  # one draw: every sample shares the prior's frame structure
        rows, metrics, details = [], {}, {"calibrated": True}

        # temporal structure: static scene (zero flow), correlation at a fixed pixel
        still = prior.draw(shape, gen, torch.zeros(F - 1, H, W, 2))
        emp = corr_matrix(still)
        expected = prior.expected_corr(F)
        off = ~torch.eye(F, dtype=torch.bool)
        if expected is not None:
            err = (emp - expected).abs()[off]
            metrics["temporal_corr_error"] = Metric(float(err.mean()), "lower", "mean |corr - analytic|", F * (F - 1))
            metrics["temporal_corr_max_error"] = Metric(float(err.max()), "lower", "max |corr - analytic|", F * (F - 1))
            details["expected_corr"] = expected.round(decimals=4).tolist()
        details["empirical_corr"] = emp.round(decimals=4).tolist()
        details["lag1_corr"] = float(emp.diagonal(1).mean())  # descriptive: no direction is better

        # warping: each synthetic motion; the last draw is under motion (what the effect checks see)
        moving = []
        for motion in self.motions:
            flow = motion_flow(motion, self.speed, H, W)
            x = prior.draw(shape, gen, flow.expand(F - 1, H, W, 2))
            moving.append(x)
            p, q, a, inside = overlap_weights(flow)
            prev, nxt = x[:-1].flatten(2).double(), x[1:].flatten(2).double()  # [F-1, SC, P]
            gt = torch.zeros_like(prev).index_add_(2, p, prev[..., q] * a)  # E[next | prev]
            y, g = nxt[..., inside], gt[..., inside]
            sum_a2 = torch.zeros(H * W, dtype=torch.float64).index_add_(0, p, a * a)[inside]
            coh = float((y * g).sum() / ((y * y).sum() * (g * g).sum()).sqrt())
            row = {
                "id": f"warp-{motion}",
                "motion": motion,
                "warp_coherence": coh,
                "warp_coherence_ideal": float(sum_a2.mean().sqrt()),
                "warp_var": float(nxt.double().var()),
                **spatial_whiteness(x[1:]),
            }
            rows.append(row)
        if self.motions:
            for r in rows:
                r["warp_coherence_error"] = abs(r["warp_coherence"] - r["warp_coherence_ideal"])
            metrics["warp_coherence_error"] = Metric.mean(
                [r["warp_coherence_error"] for r in rows], "lower", "|coherence - ideal|", "warp_coherence_error"
            )
            for key in ("warp_coherence", "warp_coherence_ideal"):
                details[key] = sum(r[key] for r in rows) / len(rows)
            metrics["warp_var_error"] = Metric.mean([abs(r["warp_var"] - 1) for r in rows], "lower", "|var - 1|")

        # Gaussianity and whiteness per frame, over the still and moving draws
        pooled = torch.cat([still] + moving, 1)
        frame_rows = []
        for t in range(F):
            st = frame_stats(pooled[t].numpy(), self.stat_subsample)
            frame_rows.append({"id": f"frame-{t}", "frame": t, **st})
        rows += frame_rows
        for key, unit in (("mean", "value"), ("skew", "value"), ("excess_kurtosis", "value")):
            metrics[f"{key}_abs"] = Metric.mean([abs(r[key]) for r in frame_rows], "lower", f"|{key}|")
        metrics["var_error"] = Metric.mean([abs(r["var"] - 1) for r in frame_rows], "lower", "|var - 1|")
        metrics["ks_stat"] = Metric.mean([r["ks_stat"] for r in frame_rows], "lower", "KS D", "ks_stat")
        metrics["ad_stat"] = Metric.mean([r["ad_stat"] for r in frame_rows], "lower", "AD A²", "ad_stat")
        white = spatial_whiteness(pooled)
        metrics["spatial_corr"] = Metric(
            max(abs(white["spatial_corr_x"]), abs(white["spatial_corr_y"])), "lower", "|lag-1 corr|"
        )
        metrics["psd_flatness"] = Metric(white["psd_flatness"], "higher", "geo/arith mean")

        toy = self.linear_denoiser_toy(prior, still)
        for key, (value, direction, unit) in toy.items():
            if direction is None:  # descriptive values with no better direction
                details[key] = value
            else:
                metrics[key] = Metric(value, direction, unit)
        data_hash = hashlib.sha256(json.dumps([shape, list(self.motions), self.speed, ctx.seed]).encode()).hexdigest()
        return TaskResult(metrics, rows, details, data_hash)

    def linear_denoiser_toy(self, prior, eps: torch.Tensor) -> dict:
        """Data x0: per pixel an F-frame Gaussian series, mean m, covariance v·rho^|i-j|. The optimal
        denoiser is E[x0|x_t] = m + sqrt(ab)·S(ab·S + (1-ab)I)^-1 (x_t - sqrt(ab)·m), exact; DDIM
        (eta = 0) from the prior's start step and initial latent down to t = 0."""
        F = eps.shape[0]
        ab = alpha_bars(self.diffusion_steps)
        idx = torch.arange(F, dtype=torch.float64)
        sigma = self.toy_var * self.toy_rho ** (idx[:, None] - idx[None, :]).abs()
        mean = torch.full((F, 1), self.toy_mean, dtype=torch.float64)
        start = max(1, round(prior.start_fraction * self.diffusion_steps))
        e = eps.flatten(1).double()
        x = prior.initial_latent(e, float(ab[start]), mean, self.toy_var).double()
        init_m, init_v = x.mean(1), x.var(1)
        q_m, q_v = ab[start].sqrt() * mean[:, 0], ab[start] * self.toy_var + 1 - ab[start]
        kl = gaussian_kl(q_m, q_v, init_m, init_v)
        kl_plain = gaussian_kl(q_m, q_v, torch.zeros(F, dtype=torch.float64), torch.ones(F, dtype=torch.float64))
        ts = torch.linspace(start, 0, self.toy_steps + 1).round().long().unique_consecutive()

        def x0_hat(a):
            def fn(xt):
                n = xt.shape[0]
                s = sigma[:n, :n]
                k = a.sqrt() * s @ torch.linalg.inv(a * s + (1 - a) * torch.eye(n, dtype=torch.float64))
                return mean[:n] + k @ (xt - a.sqrt() * mean[:n])

            return fn

        for t, t_prev in zip(ts[:-1], ts[1:]):
            a, a_prev = ab[t], ab[t_prev]
            x0 = prior.denoise(x, x0_hat(a))
            eps_hat = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps_hat
        out = corr_matrix(x)
        data_corr = sigma / self.toy_var
        off = ~torch.eye(F, dtype=torch.bool)
        return {
            "toy_corr_error": (float((out - data_corr).abs()[off].mean()), "lower", "mean |corr - data corr|"),
            "toy_lag1_corr": (float(out.diagonal(1).mean()), None, ""),
            "toy_lag1_error": (
                float((out.diagonal(1).mean() - self.toy_rho).abs()),
                "lower",
                "|lag-1 corr - data rho|",
            ),
            "toy_mean_error": (float((x.mean() - self.toy_mean).abs()), "lower", "|mean - data mean|"),
            "toy_var_ratio": (float(x.var(1).mean() / self.toy_var), None, ""),
            "toy_var_error": (float((x.var(1).mean() / self.toy_var - 1).abs()), "lower", "|var / data var - 1|"),
            "toy_init_kl": (kl, "lower", "nats per element"),
            "toy_init_kl_plain": (kl_plain, "lower", "nats per element, N(0, I) at the same step"),
        }
