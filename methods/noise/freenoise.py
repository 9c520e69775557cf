"""FreeNoise: noise rescheduling for long videos, and weighted fusion of sliding windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.registry import register
from harness.methods.noise._common import NoisePrior, gaussian


@register
@dataclass
class FreeNoise(NoisePrior):
    """FreeNoise — Qiu et al. 2024, "FreeNoise: Tuning-Free Longer Video Diffusion via Noise
    Rescheduling" (arXiv:2310.15169); defaults from AILab-CVC/FreeNoise (window 16, stride 4).

    Rescheduling (inference_freenoise.py): draw noise for all M frames, then for i in
    range(F, M, S): frames[i:i+S] = frames[shuffle(range(i-F, i-F+S))], an in-place chain — every
    frame >= F is an exact copy of one of the first F frames. Window fusion
    (attention_freenoise.py): a model that sees F frames runs on the views (k·S, k·S+F),
    k = 0..(M-F)//S, and the outputs are averaged with weights [1, 2, .., F/2, F/2, .., 1]; the
    `noise_prior` task's linear-denoiser toy applies its F-frame denoiser that way.

    window_size: F (16). window_stride: S (4)."""

    name = "freenoise"
    paper = "FreeNoise: Tuning-Free Longer Video Diffusion via Noise Rescheduling (arXiv:2310.15169)"
    smoke_args = {"window_size": "4", "window_stride": "2"}
    ranges = {"window_size": "[2, inf)", "window_stride": "[1, inf)"}  # checked by params.build before any model loads
    window_size: int = field(default=16, metadata={"help": "frames the model sees at once (F)"})
    window_stride: int = field(default=4, metadata={"help": "shift between windows (S)"})

    def __post_init__(self):
        if self.window_size < 2 or not 1 <= self.window_stride <= self.window_size:
            raise ValueError("need window_size >= 2 and 1 <= window_stride <= window_size")

    def sources(self, frames: int, generator) -> list[int]:
        """Which of the first F frames each frame copies (identity below F)."""
        src = list(range(frames))
        F, S = self.window_size, self.window_stride
        for i in range(F, frames, S):
            block = list(range(i - F, i - F + S))
            perm = torch.randperm(S, generator=generator).tolist()
            for k, j in enumerate(range(i, min(i + S, frames))):
                src[j] = src[block[perm[k]]]
        return src

    def sample(self, shape, generator, flows=None):
        x = gaussian(shape, generator)
        self._sources = self.sources(shape[0], generator)
        out = x[self._sources].clone()
        self._copies_exact = all(torch.equal(out[j], out[s]) for j, s in enumerate(self._sources))
        return out

    def expected_corr(self, frames):
        src = getattr(self, "_sources", None)
        if src is None or len(src) != frames:
            return None  # the copy pattern depends on the shuffle of the last draw
        s = torch.tensor(src)
        return (s[:, None] == s[None, :]).double()

    @staticmethod
    def window_weights(F: int) -> torch.Tensor:
        half = list(range(1, F // 2 + 1))
        return torch.tensor(half + ([F // 2 + 1] if F % 2 else []) + half[::-1], dtype=torch.float64)

    def views(self, frames: int) -> list[tuple[int, int]]:
        F, S = self.window_size, self.window_stride
        if frames <= F:
            return [(0, frames)]
        return [(k * S, k * S + F) for k in range((frames - F) // S + 1)]

    def denoise(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Apply `fn` (a model that sees at most F frames) on every view of x [frames, ...] and
        average the outputs with the window weights; frames no view covers keep fn on the tail."""
        frames = x.shape[0]
        views = self.views(frames)
        if views[-1][1] < frames:  # (M-F) not divisible by S: the official code leaves a tail
            views.append((frames - self.window_size, frames))
        acc = torch.zeros_like(x, dtype=torch.float64)
        weight = torch.zeros(frames, dtype=torch.float64)
        for a, b in views:
            w = self.window_weights(b - a)
            acc[a:b] += w.view(-1, *[1] * (x.dim() - 1)) * fn(x[a:b]).double()
            weight[a:b] += w
        return (acc / weight.view(-1, *[1] * (x.dim() - 1))).to(x.dtype)

    def check_effect(self, lm, ctx, result):
        reason = super().check_effect(lm, ctx, result)
        if reason:
            return reason
        frames = self._last["shape"][0]
        if frames <= self.window_size:
            return f"{frames} frames fit in one window of {self.window_size}: nothing was rescheduled"
        if not self._copies_exact:
            return "frames past the first window are not exact copies of earlier frames"
        return None
