"""The kvpress bridge and the presses our methods match (kvpress's SnapKV and StreamingLLM)."""

import pytest
import torch
from transformers import DynamicCache

from harness import registry
from tests import kv_helpers
from tests.kv_helpers import method, run_with

registry.load()
ids = kv_helpers.ids  # the module fixture the kv test files share


def test_kvpress_bridge_without_kvpress_says_how_to_install():
    pytest.importorskip("transformers")
    try:
        import kvpress  # noqa: F401

        pytest.skip("kvpress is installed: the cross-check below runs instead")
    except ImportError:
        pass
    from harness.errors import UserError

    with pytest.raises(UserError, match="pip install"):
        registry.method("kvpress:SnapKVPress")


def press_cache(lm, ids, p):
    cache = DynamicCache()
    with torch.no_grad(), p(lm.model):
        lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    return cache


def assert_same_kept(cache, run):
    for layer, lc in zip(cache.layers, run.layers.values()):
        assert layer.keys.shape[2] == lc.n
        for h in range(lc.k.shape[1]):  # same kept set per head (kvpress's order is topk's)
            ours_k = lc.k[0, h][lc.k[0, h, :, 0].argsort()]
            theirs = layer.keys[0, h][layer.keys[0, h, :, 0].argsort()]
            assert torch.allclose(ours_k, theirs, atol=1e-4)


@pytest.mark.fidelity(
    "streaming_llm",
    reference="kvpress KeyRerotationPress(StreamingLLMPress) on the same model and prompt",
    tolerance="same kept tokens per head (keys abs 1e-4)",
)
def test_matches_kvpress_streaming_llm(tiny_lm, ids):
    kvpress = pytest.importorskip("kvpress", reason="optional extra kvpress not installed")
    run = run_with(tiny_lm, method("streaming_llm"), ids, 0.25)
    p = kvpress.KeyRerotationPress(press=kvpress.StreamingLLMPress(compression_ratio=0.75))
    assert_same_kept(press_cache(tiny_lm, ids, p), run)


@pytest.mark.fidelity(
    "snapkv",
    reference="kvpress SnapKVPress (same model, prompt, window and kernel)",
    tolerance="same kept tokens per head (keys abs 1e-4)",
)
@pytest.mark.parametrize("window,kept", [(16, 8), (16, 16), (16, 17), (16, 40), (64, 24), (64, 64), (64, 80)])
def test_matches_kvpress_snapkv(tiny_lm, ids, window, kept):
    """Kept counts below, at and above the observation window: at or below it the window's own
    tokens must win every tie with the best earlier tokens (kvpress pads them with max + 1), above
    it the scores decide which earlier tokens stay."""
    kvpress = pytest.importorskip("kvpress", reason="optional extra kvpress not installed")
    from harness.methods.kv.kvpress_bridge import press_ratio

    run = run_with(tiny_lm, method("snapkv", window_size=window), ids, float(kept))
    p = kvpress.SnapKVPress(compression_ratio=press_ratio(len(ids), kept), window_size=window, kernel_size=5)
    assert_same_kept(press_cache(tiny_lm, ids, p), run)


def test_bridge_ratio_keeps_the_requested_count_under_kvpress_arithmetic():
    """kvpress's own compute_n_kept must turn the bridge's ratio into exactly the asked count, for
    every (length, kept) pair up to 600 (1 - kept/n truncated one short in ~13 % of them)."""
    utils = pytest.importorskip("kvpress.utils", reason="optional extra kvpress not installed")
    from harness.methods.kv.kvpress_bridge import press_ratio

    wrong = [(n, k) for n in range(1, 600) for k in range(1, n + 1) if utils.compute_n_kept(n, press_ratio(n, k)) != k]
    assert not wrong, f"{len(wrong)} pairs keep another count, e.g. {wrong[:5]}"


@pytest.mark.parametrize("press", ["KnormPress", "SnapKVPress"])
def test_bridge_keeps_the_budget_in_tokens(tiny_lm, ids, press):
    """End to end through the press: a token-count budget keeps exactly that many tokens per layer,
    at prompt lengths and counts where int(n * (1 - (1 - kept / n))) is one short, and two where it is not."""
    pytest.importorskip("kvpress", reason="optional extra kvpress not installed")
    args = {"press_args": '{"window_size": 4}'} if press == "SnapKVPress" else {}
    m = method(f"kvpress:{press}", **args)
    for n, kept in [(96, 7), (60, 27), (61, 22), (63, 29), (66, 21), (70, 29), (96, 95)]:
        run = run_with(tiny_lm, m, ids[:n], float(kept))
        assert run.kept_tokens() == kept, (n, kept)


def test_kvpress_bridge_runs_the_task(tiny_model, tmp_path):
    pytest.importorskip("kvpress", reason="optional extra kvpress not installed")
    from harness import records, runner

    args = dict(registry.TASKS["kv_compression"].smoke_args, budgets="0.25,0.5")
    cells = runner.resolve(["kv_compression"], ["kvpress:SnapKVPress"], tiny_model, args, {}, limit=1)
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    m = records.read(out.path)["metrics"]
    assert abs(m["kept_fraction@0.25"]["value"] - 0.25) <= 0.02 and abs(m["kept_fraction@0.5"]["value"] - 0.5) <= 0.02
