"""LOOK-M: the text-prior kept set and the pivotal merge against literal loops on a hand-built
attention pattern, and the mechanism end to end on a tiny random-initialised LLaVA checkpoint
(built here; quality numbers need a real checkpoint)."""

import math

import pytest
import torch

from harness import registry
from harness.methods.kv.look_m import merge_evicted, text_prior_keep
from tests.kv_helpers import method, run_with

registry.load()


@pytest.mark.fidelity(
    "look_m",
    reference="literal loops: the text-prior kept set and the pivotal merge by cosine similarity",
    tolerance="exact set; float32 assert_close defaults",
)
def test_kept_set_and_pivot_merge_match_literal_loops():
    gen = torch.Generator().manual_seed(0)
    n, d = 12, 4
    # accumulated attention of a hand-built pattern: column sums of a causal attention matrix
    attn = torch.rand(n, n, generator=gen).tril()
    attn = attn / attn.sum(-1, keepdim=True)
    score = attn.sum(0)[None, None]
    image = torch.zeros(1, 1, n, dtype=torch.bool)
    image[..., 3:8] = True
    pos = torch.arange(n)[None, None]
    heavy, recent = 4, 2
    kept = text_prior_keep(score, image, pos, heavy, recent)[0, 0].tolist()
    window = [i for i in range(n - recent, n)]
    text = sorted((i for i in range(n - recent) if not image[0, 0, i]), key=lambda i: -float(score[0, 0, i]))
    imgs = sorted((i for i in range(n - recent) if image[0, 0, i]), key=lambda i: -float(score[0, 0, i]))
    want = set(window) | set((text + imgs)[:heavy])  # text first, images only if text runs out
    assert {i for i, k in enumerate(kept) if k} == want
    k, v = torch.randn(1, 1, n, d, generator=gen), torch.randn(1, 1, n, d, generator=gen)
    new_k, new_v = merge_evicted(k, v, torch.tensor(kept)[None, None], "pivot")
    keys, vals = k[0, 0].tolist(), v[0, 0].tolist()
    cos = lambda a, b: sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))  # noqa: E731
    groups = {c: [] for c in want}
    for e in range(n):
        if e not in want:
            groups[max(want, key=lambda c: cos(keys[e], keys[c]))].append(e)
    for c, members in groups.items():  # pivot: mean of {x_c} ∪ {(x_e + x_c)/2}
        for got, xs in ((new_k, keys), (new_v, vals)):
            parts = [xs[c]] + [[(a + b) / 2 for a, b in zip(xs[e], xs[c])] for e in members]
            mean = [sum(col) / len(parts) for col in zip(*parts)]
            torch.testing.assert_close(got[0, 0, c], torch.tensor(mean))


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    """A random-initialised LLaVA (CLIP vision tower, Llama text model), saved as a checkpoint folder:
    the one benchmarks/look_m_mechanism.py measures."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "look_m_mechanism.py"
    spec = importlib.util.spec_from_file_location("look_m_mechanism", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def test_tiny_llava_loads_and_look_m_evicts_image_tokens_first(tiny_llava):
    from harness.lm import LM
    from harness.models import load

    lm = LM(load(str(tiny_llava), "cpu"))
    assert type(lm.model).__name__ == "LlavaForConditionalGeneration"
    img = lm.model.config.image_token_id
    ids = (
        lm.encode(" the cat sat on the mat .")[:6] + [img] * 16 + lm.encode(" what is in the picture ? a cat on a mat")
    )
    m = method("look_m", budget=0.5)
    run = run_with(lm, m, ids, 0.5)
    target = round(0.5 * len(ids))
    for lc in run.layers.values():
        assert lc.n == target
        held = lc.pos[0].tolist()
        recent = target - target // 2
        text = [p for p in range(len(ids) - recent) if ids[p] != img]
        assert len(text) >= target // 2
        for head in held:  # more text than heavy slots before the window: no image token is kept
            assert all(ids[p] != img for p in head if p < len(ids) - recent)
            assert set(range(len(ids) - recent, len(ids))) <= set(head)
    assert m._merged == len(run.layers) * lm.model.config.text_config.num_key_value_heads * (len(ids) - target)
    assert len(lm.generate([ids], 2)[0]) == 2  # generation runs through the LLaVA model


def test_text_only_model_is_refused_with_one_clear_message(tiny_lm):
    from harness.errors import UserError

    with pytest.raises(UserError, match="vision-language model"):
        method("look_m").prepare(tiny_lm)


def test_kv_compression_with_image_tokens_runs_look_m_on_llava(tiny_llava, tmp_path):
    """The task's `image_tokens` puts image tokens where a LLaVA prompt has them, so
    look_m evicts through the CLI's path: each context's cache holds the budget, image tokens
    evicted first, and the record names the option."""
    from harness import records, runner

    args = dict(registry.TASKS["kv_compression"].smoke_args, image_tokens="24")
    cells = runner.resolve(["kv_compression"], ["look_m"], str(tiny_llava), args, {}, limit=1)
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    assert rec["task"]["params"]["image_tokens"] == 24
    assert abs(rec["metrics"]["kept_fraction@0.5"]["value"] - 0.5) <= 0.02
    del args["image_tokens"]  # text-only prompts: look_m leaves the cache alone, which the task refuses
    cells = runner.resolve(["kv_compression"], ["look_m"], str(tiny_llava), args, {}, limit=1)
    with pytest.raises(Exception, match="kept 1.000 of the tokens"):
        runner.evaluate(cells, device="cpu", out=tmp_path / "text")


def test_image_tokens_on_a_text_only_model_is_one_clear_error(tiny_model, tmp_path):
    from harness import runner
    from harness.errors import UserError

    args = dict(registry.TASKS["kv_compression"].smoke_args, image_tokens="8")
    cells = runner.resolve(["kv_compression"], ["snapkv"], tiny_model, args, {}, limit=1)
    with pytest.raises(UserError, match="vision-language model"):
        runner.evaluate(cells, device="cpu", out=tmp_path)
