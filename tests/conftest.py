import os
import shutil
import tempfile

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# hypothesis keeps no example database, and its other caches go to a temporary folder of this run
# (by default both are written to .hypothesis/ in the working tree)
settings.register_profile("harness", database=None)
settings.load_profile("harness")
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="harness-test-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)


def pytest_unconfigure(config):
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _isolated_state(tmp_path_factory):
    """This run's caches (model hashes, PRM scores), fitted artifacts and default
    results folder live in its own temporary folder: nothing another run or checkout left on this
    machine is read, and nothing outside the temporary folders is written (results/ least of all)."""
    base = tmp_path_factory.mktemp("harness-state")
    saved = {v: os.environ.get(v) for v in ("HARNESS_CACHE", "HARNESS_ARTIFACTS", "HARNESS_RESULTS")}
    os.environ.update(
        HARNESS_CACHE=str(base / "cache"),
        HARNESS_ARTIFACTS=str(base / "artifacts"),
        HARNESS_RESULTS=str(base / "results"),
    )
    yield
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def make_tiny_llama(folder, kv_heads=2, max_pos=128, seed=0, **config):
    """A random-init tiny Llama with the zoo tokenizer, saved in HF format (safetensors). A
    Cross-Layer Attention flag in `config` builds the CLA layout (reusing layers without K/V)."""
    from harness.cla import CLA_CONFIG_FLAG
    from harness.zoo.tokenizer import build_tokenizer
    from harness.zoo.train import Recipe, build_model

    config = dict(config)
    kv_share = config.pop(CLA_CONFIG_FLAG, 1)

    tok = build_tokenizer(1)  # pinned: random-init fixtures, their token ids must not move with the zoo generation
    torch.manual_seed(seed)
    recipe = Recipe(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        context_length=max_pos,
        kv_share=kv_share,
    )
    model = build_model(recipe, len(tok), tok.pad_token_id)
    for key, value in config.items():
        setattr(model.config, key, value)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_with(tmp_path_factory, tiny_model):
    """tiny_model_with(**config): the tiny model, or a variant with extra config fields (cached)."""
    made = {}

    def get(**config):
        if not config:
            return tiny_model
        key = tuple(sorted(config.items()))
        if key not in made:
            made[key] = make_tiny_llama(tmp_path_factory.mktemp("tiny-variant"), **config)
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny_lm(tiny_model):
    from harness.lm import LM
    from harness.models import load

    return LM(load(tiny_model, "cpu"), batch_size=4)


@pytest.fixture(scope="session")
def synthetic_video_folder(tmp_path_factory):
    """A folder of small synthetic videos in VBench naming (`<prompt>-<index>.mp4`), one per motion."""
    from harness.synthetic_video import PROMPT, synthetic_video
    from harness.video import write_video

    folder = tmp_path_factory.mktemp("videos")
    for motion in ("static", "pan_left", "zoom_in"):
        write_video(folder / f"{PROMPT[motion]}-0.mp4", synthetic_video(motion, frames=16, size=48, seed=1))
    return str(folder)


def _smoke_video_ids(folder) -> list[str]:
    """The ids of the videos the matrix test's sources hand out: synthetic_videos' and the folder's."""
    import os

    from harness.synthetic_video import MOTIONS

    return [f"{m}-0" for m in MOTIONS] + sorted(os.listdir(folder))


@pytest.fixture(scope="session")
def mtscore_features(tmp_path_factory, synthetic_video_folder):
    """Random stand-ins for InternVideo2 features of the smoke sources' videos (plumbing only)."""
    import numpy as np

    ids, rng = _smoke_video_ids(synthetic_video_folder), np.random.default_rng(0)
    path = tmp_path_factory.mktemp("mtscore") / "features.npz"
    np.savez(path, ids=np.array(ids), video_feats=rng.normal(size=(len(ids), 8)), text_feats=rng.normal(size=(10, 8)))
    return str(path)


@pytest.fixture(scope="session")
def dreamsim_features(tmp_path_factory, synthetic_video_folder):
    """Random stand-ins for DreamSim embeddings of the smoke sources' videos (plumbing only)."""
    import numpy as np

    ids, rng = _smoke_video_ids(synthetic_video_folder), np.random.default_rng(0)
    path = tmp_path_factory.mktemp("dreamsim") / "features.npz"
    np.savez(
        path,
        ids=np.array(ids),
        image_feats=rng.normal(size=(len(ids), 8)),
        frame_feats=rng.normal(size=(4 * len(ids), 8)),
        frame_counts=np.full(len(ids), 4),
    )
    return str(path)


FAKE_VBENCH = '''
"""A stand-in for the official vbench package (its documented API), computing temporal_flickering."""
import json, os
__version__ = "0.0-fake"

class VBench:
    def __init__(self, device, full_info, output_path):
        self.out = output_path

    def evaluate(self, videos_path, name, dimension_list, mode="vbench_standard"):
        from harness.tasks._vbench import flicker_score
        from harness.video import read_video
        assert mode == "custom_input" and dimension_list == ["temporal_flickering"]
        per = [{"video_path": os.path.join(videos_path, f), "video_results": flicker_score(read_video(os.path.join(videos_path, f)))}
               for f in sorted(os.listdir(videos_path)) if f.endswith(".mp4")]
        os.makedirs(self.out, exist_ok=True)
        value = sum(p["video_results"] for p in per) / len(per)
        with open(os.path.join(self.out, name + "_eval_results.json"), "w") as f:
            json.dump({"temporal_flickering": [value, per]}, f)
'''


@pytest.fixture(scope="session")
def fake_vbench_python(tmp_path_factory):
    """An 'interpreter of another environment' whose vbench package is the stand-in above."""
    import sys

    root = tmp_path_factory.mktemp("fake-vbench-env")
    (root / "vbench").mkdir()
    (root / "vbench" / "__init__.py").write_text(FAKE_VBENCH)
    script = root / "python"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{root}:$PYTHONPATH" exec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def one_torch_thread():
    """Backbone convolutions on a shared 2-core machine run several times faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def reliability_report(tmp_path, request):
    """write(name, check=..., cases=..., tracebacks=..., lost=..., **figures): a reliability test's
    figures as <name>.json in $HARNESS_TEST_REPORTS (`make test-slow` sets
    benchmarks/results/reliability/, from which `harness docs` regenerates the table in
    docs/reliability.md), else in the test's tmp_path. tracebacks None: not applicable."""
    import json
    from pathlib import Path

    def write(name: str, *, check: str, cases: int, tracebacks: int | None, lost: int, **figures) -> Path:
        report = {"check": check, "test": request.node.nodeid.split("[")[0], "cases": cases}
        report.update(tracebacks=tracebacks, lost=lost, figures=figures)
        # a relative folder is taken from where pytest started (a test may have changed directory)
        folder = Path(request.config.invocation_params.dir) / os.environ.get("HARNESS_TEST_REPORTS", tmp_path)
        path = folder / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"{name}:", json.dumps(report, sort_keys=True))
        return path

    return write
