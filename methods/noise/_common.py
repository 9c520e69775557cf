"""Shared pieces of the video noise priors (kind `noise_prior`).

A noise prior samples the initial noise of a video diffusion model, a tensor [F, C, H, W] whose
per-pixel marginals are N(0, 1). The `noise_prior` task calls `sample(shape, generator, flows)`;
`flows` is a backward flow per frame transition ([F-1, H, W, 2], frame t+1 pixel centre (x, y)
comes from (x + fx, y + fy) in frame t). Priors that do not warp ignore it.
`expected_corr(F)` is the analytic temporal correlation of the same pixel across frames (None when
it depends on the flow). Each prior remembers what it produced last, so its effect check can tell a
prior that acted from one that silently returned independent noise."""

from __future__ import annotations

import torch

from harness.interfaces import NoiseSampler


class NoisePrior(NoiseSampler):
    family = "noise"
    warps = False  # True: frames follow the flows (the task scores warping on them)
    requires_effect_corr = True  # check_effect: off-diagonal temporal correlation must be nonzero

    def sample(self, shape, generator: torch.Generator, flows: torch.Tensor | None = None) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define sample()")  # abstract: each subclass overrides it

    def expected_corr(self, frames: int) -> torch.Tensor | None:
        return None

    # Where sampling starts, as a fraction of the T training steps, and the latent it starts from.
    # Every prior but analytic_init starts at T from the noise itself.
    start_fraction: float = 1.0

    def initial_latent(
        self, eps: torch.Tensor, alpha_bar: float, data_mean: torch.Tensor, data_var: float
    ) -> torch.Tensor:
        return eps

    def denoise(self, x: torch.Tensor, fn) -> torch.Tensor:
        """How a denoiser `fn` (frames -> clean estimate) is applied to a clip; FreeNoise fuses windows."""
        return fn(x)

    def generator_refusal(self) -> str | None:
        """A text-to-video pipeline has no optical flow to warp along and starts at step T."""
        if self.warps:
            return f"{self.name} warps noise along optical flow, and a text-to-video generator has no flow to give it"
        if self.start_fraction < 1:
            return (
                f"{self.name} starts sampling at step {self.start_fraction}·T from training-data statistics; "
                f"the generator adapter starts every pipeline at T (start_fraction=1 makes it plain noise)"
            )
        return None

    def draw(self, shape, generator, flows=None) -> torch.Tensor:
        """What the task calls: sample, then remember the shape and lag-1 correlation for check_effect."""
        x = self.sample(tuple(shape), generator, flows)
        self._last = {"requested": tuple(shape), "shape": tuple(x.shape), "lag1": lag1_corr(x)}
        return x

    def drawn_reason(self) -> str | None:
        """Why the last draw does not count: none was made, or its shape is not the requested one."""
        last = getattr(self, "_last", None)
        if last is None:
            return "the task never drew noise from this prior"
        if last["shape"] != last["requested"]:
            return f"noise of shape {last['shape']} for a requested {last['requested']}"
        return None

    def check_effect(self, lm, ctx, result):
        reason = self.drawn_reason()
        if reason:
            return reason
        last = self._last
        expected = self.expected_corr(last["shape"][0])
        if self.requires_effect_corr and expected is not None:
            want = float(expected.diagonal(1).mean())
            # independent noise has lag-1 correlation ~0; a prior that should correlate must show it
            if want > 0.05 and last["lag1"] < want / 2:
                return (
                    f"adjacent frames correlate {last['lag1']:.3f}, expected {want:.3f}: "
                    f"the prior produced (near) independent noise"
                )
            if want <= 0.05 and abs(last["lag1"]) > 0.1:
                return f"adjacent frames correlate {last['lag1']:.3f}, expected independent frames"
        return None


def gaussian(shape, generator, std: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32) * std


def lag1_corr(x: torch.Tensor) -> float:
    """Mean correlation of each frame with the next, over all channels and pixels."""
    if x.shape[0] < 2:
        return 0.0
    a, b = x[:-1].flatten(1).double(), x[1:].flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).mean())


def constant_corr(frames: int, rho: float) -> torch.Tensor:
    c = torch.full((frames, frames), float(rho), dtype=torch.float64)
    c.fill_diagonal_(1.0)
    return c


def ar1_corr(frames: int, rho: float) -> torch.Tensor:
    idx = torch.arange(frames, dtype=torch.float64)
    return rho ** (idx[:, None] - idx[None, :]).abs()


def pixel_grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x, y), each [H, W], in pixel units (centre of pixel 0 is 0.0)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return xs, ys


def warp_sequence(first: torch.Tensor, flows: torch.Tensor | None, frames: int, step) -> torch.Tensor:
    """Frame 0 = `first` [C, H, W]; frame t+1 = step(frame t, flows[t]); a missing flow is zero motion."""
    c, h, w = first.shape
    out = [first]
    for t in range(frames - 1):
        flow = flows[t] if flows is not None else torch.zeros(h, w, 2)
        out.append(step(out[-1], flow))
    return torch.stack(out)


def sample_at(noise: torch.Tensor, flow: torch.Tensor, mode: str, generator) -> torch.Tensor:
    """Interpolation warp (grid_sample) of [C, H, W] noise along a backward flow; pixels whose
    source falls outside the frame get fresh N(0, 1) noise (they are disoccluded)."""
    c, h, w = noise.shape
    xs, ys = pixel_grid(h, w)
    sx, sy = xs + flow[..., 0], ys + flow[..., 1]
    grid = torch.stack([(sx + 0.5) / w * 2 - 1, (sy + 0.5) / h * 2 - 1], -1)[None]
    out = torch.nn.functional.grid_sample(noise[None], grid, mode=mode, padding_mode="zeros", align_corners=False)[0]
    inside = (sx >= -0.5) & (sx <= w - 0.5) & (sy >= -0.5) & (sy <= h - 0.5)
    return torch.where(inside, out, gaussian(noise.shape, generator))


class WarpPrior(NoisePrior):
    """Frame 0 is N(0, I); each next frame is the previous one warped along the flow. With zero
    flow every frame equals frame 0 (temporal correlation 1), which is what `expected_corr` states;
    under motion the task scores warping fidelity instead."""

    warps = True

    def expected_corr(self, frames):
        return torch.ones(frames, frames, dtype=torch.float64)

    def step(self, noise: torch.Tensor, flow: torch.Tensor, generator) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define step()")  # abstract: each subclass overrides it

    def sample(self, shape, generator, flows=None):
        first = gaussian(shape[1:], generator)
        out = warp_sequence(first, flows, shape[0], lambda x, f: self.step(x, f, generator))
        self._moved = flows is not None and bool(flows.abs().max() > 0)
        return out

    def check_effect(self, lm, ctx, result):
        reason = self.drawn_reason()
        if reason:
            return reason
        if not self._moved:
            return "the prior was never given a nonzero flow to warp along"
        # probe: a one-pixel shift must move the noise by exactly one pixel (every warp is exact there)
        gen = torch.Generator().manual_seed(0)
        probe = gaussian((2, 8, 8), gen)
        shift = torch.zeros(8, 8, 2)
        shift[..., 0] = 1.0
        moved = self.step(probe, shift, gen)
        if not torch.allclose(moved[:, :, :-1], probe[:, :, 1:], atol=1e-5):
            return "its warp step does not carry the noise along a one-pixel flow"
        return None
