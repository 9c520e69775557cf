"""What a video task asks of a generator (`--model diffusers:PATH`, harness.generator): the
benchmark's own prompt list for its dimension (tasks/_prompt_suites.py) and the benchmark's sampling
rule, plus the generation settings a user may change. The settings are task parameters that stay
out of run ids at their defaults (omit_at_default), so records made before them keep their ids.

Each video task also says where it stands against its benchmark (`dimension`, `backend`,
`fidelity`), from which `harness docs` generates the coverage table of docs/reference/video-coverage.md."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from harness import generator
from harness.errors import UserError

GEN = {"omit_at_default": True}
FIDELITY = ("faithful", "proxy", "external", "unavailable")


@dataclass
class Generated:
    """Mixin of the video tasks that can score generated videos."""

    # "<benchmark>:<dimension>", e.g. "vbench:subject_consistency", "chronomagic:chscore"
    benchmark_dimension: ClassVar[str | None] = None
    backend: ClassVar[str] = ""  # what scores it here (a backbone, a classical proxy, an input file)
    # faithful: the benchmark's rule on its model (given the weights); proxy: a stand-in model,
    # values not comparable; external: scored from outputs the user computes with the official code
    fidelity: ClassVar[str] = "faithful"
    per_prompt_rule: ClassVar[int] = 5  # the benchmark's videos per prompt (VBench README: 5)
    ranges = {
        "videos_per_prompt": "[1, inf)",
        "gen_frames": "[1, inf)",
        "gen_height": "[8, inf)",
        "gen_width": "[8, inf)",
        "gen_steps": "[1, inf)",
        "gen_guidance": "[0, inf)",
    }

    videos_per_prompt: int | None = field(
        default=None, metadata={**GEN, "help": "generator: videos per prompt (None: the benchmark's rule)"}
    )
    gen_frames: int | None = field(default=None, metadata={**GEN, "help": "generator: frames (None: the pipeline's)"})
    gen_height: int | None = field(default=None, metadata={**GEN, "help": "generator: height (None: the pipeline's)"})
    gen_width: int | None = field(default=None, metadata={**GEN, "help": "generator: width (None: the pipeline's)"})
    gen_steps: int | None = field(
        default=None, metadata={**GEN, "help": "generator: denoising steps (None: the pipeline's)"}
    )
    gen_guidance: float | None = field(
        default=None, metadata={**GEN, "help": "generator: classifier-free guidance scale (None: the pipeline's)"}
    )

    def suite_prompts(self) -> tuple[str, list] | None:
        """(suite version, prompts) of this task's dimension, or None when no suite is shipped for it."""
        from harness.tasks import _prompt_suites as suites

        bench, _, dim = (self.benchmark_dimension or "").partition(":")
        if bench == "vbench" and dim in suites.vbench_dimensions():
            return f"{suites.version('vbench')}:{dim}", suites.vbench_prompts(dim)
        if bench == "chronomagic":
            subset = getattr(self, "prompt_subset", "1649")
            return f"{suites.version('chronomagic')}:{subset}", suites.chronomagic_prompts(subset)
        return None

    def generation_request(self):
        found = self.suite_prompts()
        if found is None:
            return None
        suite, prompts = found
        return generator.GenerationRequest(
            suite=suite,
            prompts=prompts,
            per_prompt=self.videos_per_prompt or self.per_prompt_rule,
            frames=self.gen_frames,
            height=self.gen_height,
            width=self.gen_width,
            steps=self.gen_steps,
            guidance=self.gen_guidance,
        )

    def check_model(self, model, loading) -> None:
        if generator.is_spec(model):
            return
        set_ = [f.name for f in fields(Generated) if getattr(self, f.name) != f.default]
        if set_:
            raise UserError(
                f"task {self.name}: {', '.join(set_)} set how a generator makes the videos, and this run has "
                f"none (add --model {generator.PREFIX}PATH, or drop them)"
            )
