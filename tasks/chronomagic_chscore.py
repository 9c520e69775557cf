"""ChronoMagic-Bench CHScore (temporal coherence from point tracks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.registry import register
from harness.tasks._vbench import VideoTask, lk_track
from harness.tasks._weights import locate

# CHScore/step0-get_CHScore.py: fixed maxima (all minima 0) and weights of the five features
MAXIMA = {"AMPR": 0.93687, "MPVR": 0.89974, "FCR": 0.625, "CMPV": 20.0, "MCMPV": 1.0}
WEIGHTS = {"CMPV": 0.15, "FCR": 0.15, "AMPR": 0.35, "MPVR": 0.25, "MCMPV": 0.10}


def chscore(pos: np.ndarray, vis: np.ndarray, threshold: float = 0.1) -> dict:
    """pos [T, N, 2], vis [T, N] bool. A point is missing in frame i when invisible and not "gone in
    its own direction": its motion direction is (pos[T//2] - pos[0]) normalised, and it is excused
    when (pos_i - pos_0)·direction > 0. miss_i = missing/N, ap_i = |miss_i - miss_i-1|;
    AMPR = mean miss, MPVR = std ap, FCR = #(ap > thr)/T, CMPV = #(ap > thr), MCMPV = max ap; each
    divided by its maximum; TSI = weighted sum; CHScore = 1/TSI (0 when TSI = 0, as the official
    code does — a video with no missing point scores 0)."""
    t, n = vis.shape
    d = pos[t // 2] - pos[0]
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    ahead = ((pos - pos[0]) * d[None]).sum(-1) > 0
    missing = (~vis) & (~ahead)
    miss = missing.sum(1) / n
    ap = np.abs(np.diff(miss)) if t > 1 else np.zeros(1)
    raw = {
        "AMPR": float(miss.mean()),
        "MPVR": float(ap.std()),
        "FCR": float((ap > threshold).sum() / t),
        "CMPV": float((ap > threshold).sum()),
        "MCMPV": float(ap.max()),
    }
    tsi = sum(WEIGHTS[k] * raw[k] / MAXIMA[k] for k in raw)
    return dict(raw, TSI=tsi, CHScore=1.0 / tsi if tsi > 0 else 0.0)


def cotracker_tracks(frames: np.ndarray, checkpoint, grid: int):
    """CoTracker2 through its own package (facebookresearch/co-tracker), when installed."""
    import torch

    from harness.backbones._common import load_checked, load_state
    from harness.tasks.vbench_camera_motion import cotracker_predictor

    model = cotracker_predictor()  # configured as torch.hub's cotracker2 (v2, window 8)
    load_checked(model.model, load_state(checkpoint), "chronomagic_chscore", checkpoint, "CoTracker2's layout")
    model.eval()
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float()
    with torch.no_grad():
        tracks, visible = model(video, grid_size=grid)
    return tracks[0].numpy(), visible[0].numpy().astype(bool)


@register
@dataclass
class ChronoMagicCHScore(VideoTask):
    """ChronoMagic-Bench CHScore — Yuan et al. 2024, "ChronoMagic-Bench" (arXiv:2406.18522;
    CHScore/step0-get_CHScore.py): track a 30x30 grid through the video, turn the per-frame
    fraction of unexplained missing points into five features (AMPR, MPVR, FCR, CMPV, MCMPV),
    normalise by fixed maxima, weight (0.35, 0.25, 0.15, 0.15, 0.10) and invert. Mean over videos.

    Tracker: CoTracker2 when the `cotracker` package is importable and its weights (cotracker2 in
    tasks/weights.toml) are in the weights folder (tracker=auto or cotracker); otherwise OpenCV Lucas-Kanade tracks with LK's status
    as visibility — a PROXY (calibrated: false), selected with tracker=auto or lk."""

    name = "chronomagic_chscore"
    benchmark_dimension = "chronomagic:chscore"  # benchmark:dimension (the coverage table, the generator's prompt list)
    weight_files = ("cotracker2",)
    backend = "Lucas-Kanade tracks by default (proxy); CoTracker2 with tracker=cotracker when the cotracker package and its weights are installed"
    fidelity = "proxy"
    per_prompt_rule = 3  # ChronoMagic-Bench README: open-source models sample 3 videos per prompt (folders 1, 2, 3)
    version = "1"
    main_metric = "chscore"
    summary = "ChronoMagic CHScore (CoTracker2 when installed, else Lucas-Kanade PROXY)"
    smoke_args = {"grid": "8", "tracker": "lk"}
    unit = "1/TSI"
    grid: int = field(default=30, metadata={"help": "grid points per side (official: 30)"})
    threshold: float = field(default=0.1, metadata={"help": "jump threshold on the missing fraction"})
    tracker: str = field(default="auto", metadata={"help": "auto, cotracker or lk"})
    weights_dir: str = field(default="", metadata={"help": "folder with the CoTracker2 weights"})
    prompt_subset: str = field(
        default="1649",
        metadata={"omit_at_default": True, "help": "generator: ChronoMagic-Bench prompts, 1649 (all) or 150"},
    )

    def __post_init__(self):
        if self.tracker not in ("auto", "cotracker", "lk"):
            raise ValueError("tracker must be auto, cotracker or lk")

    def _backend(self):
        if self.tracker == "lk":
            return None
        try:
            import cotracker.predictor  # noqa: F401

            path, _ = locate(self.name, self.weights_dir, "cotracker2", "", self.tracker == "auto")
        except ImportError:
            if self.tracker == "cotracker":
                from harness.errors import UserError

                raise UserError(
                    "chronomagic_chscore tracker=cotracker: the cotracker package is not "
                    "importable (install it in this environment) — or use tracker=lk"
                ) from None
            return None
        return path

    def run(self, ctx):
        self._ckpt = self._backend()
        self.calibrated = self._ckpt is not None
        self.backend = "cotracker2" if self._ckpt is not None else "lucas-kanade (PROXY)"
        return super().run(ctx)

    def score(self, ref, frames):
        if self._ckpt is not None:
            pos, vis = cotracker_tracks(frames, self._ckpt, self.grid)
        else:
            pos, vis = lk_track(frames, self.grid)
        s = chscore(pos, vis, self.threshold)
        return dict({k: round(v, 6) for k, v in s.items()}, value=s["CHScore"])
