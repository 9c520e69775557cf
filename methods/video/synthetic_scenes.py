"""Synthetic videos of named, coloured objects with VBench-style prompts: ground truth for the
detection- and caption-based dimensions (object class, multiple objects, colour, spatial
relationship, scene)."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import register
from harness.synthetic_video import BACKGROUNDS, OBJECT_COLORS, SHAPES, object_video
from harness.video import VideoRef, middle_indices
from harness.methods.video._common import VideoSource

SCENE_DIMENSIONS = ("object_class", "multiple_objects", "color", "spatial_relationship", "scene")
COLORS = tuple(OBJECT_COLORS)


def scene_specs(dimension: str, frames: int, size: int) -> list[tuple[str, list[tuple[dict, float]]]]:
    """[(prompt in VBench's form, [(render arguments, expected score with a perfect detector), ...])].
    Per prompt, video 0 is faithful (score 1) and video 1 goes wrong from the middle frame on
    (score 0.5 when every frame is scored): the object vanishes, the second object vanishes, the colour
    changes, the pair stacks on the other axis, or the background changes."""
    s, r, half = size, size / 8, frames // 2
    first, second = range(half), range(half, frames)
    left, right, mid = 0.28 * s, 0.72 * s, 0.5 * s
    out = []
    if dimension == "object_class":
        for k, shape in enumerate(SHAPES):
            obj = dict(shape=shape, color=COLORS[k], x=mid, y=mid, r=r, vx=0.3)
            out.append((f"a {shape}", [dict(objects=[obj]), dict(objects=[dict(obj, frames=first)])]))
    elif dimension == "multiple_objects":
        for k, (a, b) in enumerate([("cube", "sphere"), ("sphere", "pyramid")]):
            oa = dict(shape=a, color=COLORS[k], x=left, y=mid, r=r, vy=0.3)
            ob = dict(shape=b, color=COLORS[k + 2], x=right, y=mid, r=r, vy=-0.3)
            out.append((f"a {a} and a {b}", [dict(objects=[oa, ob]), dict(objects=[oa, dict(ob, frames=first)])]))
    elif dimension == "color":
        for k, (color, shape) in enumerate(
            [("red", "cube"), ("blue", "sphere"), ("green", "pyramid"), ("yellow", "cube")]
        ):
            obj = dict(shape=shape, color=color, x=mid, y=mid, r=r, vx=-0.3)
            other = COLORS[(COLORS.index(color) + 3) % len(COLORS)]
            out.append(
                (f"a {color} {shape}", [dict(objects=[obj]), dict(objects=[dict(obj, color_after=(half, other))])])
            )
    elif dimension == "spatial_relationship":
        for relation, (pa, pb) in [
            ("on the left of", ((left, mid), (right, mid))),
            ("on the top of", ((mid, left), (mid, right))),
        ]:
            oa = dict(shape="cube", color="red", x=pa[0], y=pa[1], r=r)
            ob = dict(shape="sphere", color="blue", x=pb[0], y=pb[1], r=r)
            # the wrong half: the pair turned by 90 degrees (the other axis scores 0)
            wa = dict(oa, x=pa[1], y=pa[0], frames=second)
            wb = dict(ob, x=pb[1], y=pb[0], frames=second)
            out.append(
                (
                    f"a red cube {relation} a blue sphere",
                    [dict(objects=[oa, ob]), dict(objects=[dict(oa, frames=first), dict(ob, frames=first), wa, wb])],
                )
            )
    elif dimension == "scene":
        names = list(BACKGROUNDS)
        for k, name in enumerate(names):
            obj = dict(shape=SHAPES[k], color=COLORS[k], x=mid, y=mid, r=r, vx=0.3)
            out.append(
                (
                    name,
                    [
                        dict(objects=[obj], background=name),
                        dict(objects=[obj], background=(name, names[(k + 1) % len(names)], half)),
                    ],
                )
            )
    else:
        raise ValueError(f"unknown dimension {dimension!r}; choose from {', '.join(SCENE_DIMENSIONS)}")
    return [(p, [(v, 1.0 if i == 0 else 0.5) for i, v in enumerate(vs)]) for p, vs in out]


@register
@dataclass
class SyntheticScenes(VideoSource):
    """Procedural videos of flat-coloured cubes (squares), spheres (discs) and pyramids (triangles)
    over grey backgrounds, with prompts in VBench's form ("a red cube", "a cube and a sphere", "a red
    cube on the left of a blue sphere", "dark room"). Per prompt, video 0 matches its prompt in every
    frame and video 1 only in the first half (its `meta["expected"]` is the score a perfect detector
    gives under VBench's rule when all frames are scored). Not a generative model: the ground truth of
    the detection-based dimensions, scored by the `synthetic_oracle` backend in tests and reference
    runs (a proxy, never a VBench number)."""

    name = "synthetic_scenes"
    paper = "VBench: Comprehensive Benchmark Suite for Video Generative Models (arXiv:2311.17982)"
    smoke_args = {"frames": "16", "size": "48"}
    # camera_motion scores prompts that name a camera motion; mtscore and i2v_background read
    # exported features, which the matrix test writes keyed by the other sources' video ids
    smoke_not_with = ("vbench_camera_motion_proxy", "chronomagic_mtscore", "vbench_i2v_background")
    ranges = {
        "frames": "[1, inf)",
        "size": "[1, inf)",
        "fps": "[1, inf)",
    }  # checked by params.build before any model loads
    dimensions: tuple[str, ...] = field(
        default=SCENE_DIMENSIONS, metadata={"help": f"any of {', '.join(SCENE_DIMENSIONS)}"}
    )
    frames: int = 16
    size: int = field(default=64, metadata={"help": "frame height and width"})
    fps: int = 8

    def __post_init__(self):
        for d in self.dimensions:
            if d not in SCENE_DIMENSIONS:
                raise ValueError(f"unknown dimension {d!r}; choose from {', '.join(SCENE_DIMENSIONS)}")
        if self.frames < 2 or self.size < 32:
            raise ValueError("need frames >= 2 and size >= 32")

    def videos(self, ctx):
        refs = []
        for dim in self.dimensions:
            for k, (prompt, videos) in enumerate(scene_specs(dim, self.frames, self.size)):
                for i, (args, expected) in enumerate(videos):
                    a = dict(args, frames=self.frames, size=self.size, seed=ctx.seed * 1000 + 31 * k + i)
                    refs.append(
                        VideoRef(
                            id=f"{dim}-{k}-{i}",
                            prompt=prompt,
                            fps=self.fps,
                            loader=lambda n, a=a: _frames(a, n),
                            meta={"dimension": dim, "expected": expected},
                        )
                    )
        return refs


def _frames(args: dict, n: int | None):
    v = object_video(**args)
    return v if not n else v[middle_indices(len(v), n)]
