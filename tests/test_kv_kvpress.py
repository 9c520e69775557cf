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


@pytest.mark.parametrize("ours,press", [("snapkv", "SnapKVPress"), ("streaming_llm", "StreamingLLMPress")])
def test_matches_kvpress_press(tiny_lm, ids, ours, press):
    kvpress = pytest.importorskip("kvpress", reason="optional extra kvpress not installed")
    budget = 0.25
    run = run_with(tiny_lm, method(ours), ids, budget)
    p = getattr(kvpress, press)(compression_ratio=1 - budget)
    if press == "StreamingLLMPress":
        p = kvpress.KeyRerotationPress(press=p)
    cache = DynamicCache()
    with torch.no_grad(), p(tiny_lm.model):
        tiny_lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    for layer, lc in zip(cache.layers, run.layers.values()):
        assert layer.keys.shape[2] == lc.n
        for h in range(lc.k.shape[1]):  # same kept set per head (kvpress's order is topk's)
            ours_k = lc.k[0, h][lc.k[0, h, :, 0].argsort()]
            theirs = layer.keys[0, h][layer.keys[0, h, :, 0].argsort()]
            assert torch.allclose(ours_k, theirs, atol=1e-4)


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
