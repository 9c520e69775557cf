"""The kv family's engine: the dense loop equals the model, chunked prefill equals one pass, the
cache holds the budget, and the kv_compression task asserts it on every sample."""

from types import SimpleNamespace

import pytest
import torch

from harness import records, registry, runner
from harness.attention import chunk_attend
from harness.interfaces import MethodContext
from harness.projections import attention_modules
from harness.methods.kv import _driver, _run
from harness.methods.kv._cache import LayerCache, SlotStore
from harness.methods.kv._eviction import evict_outside_window
from harness.lm import KVRequest
from tests.kv_helpers import method

registry.load()
TOKEN_METHODS = ["streaming_llm", "snapkv", "h2o", "scissorhands", "vatp", "keyformer", "cam", "kvmerger"]


def text(lm, n):
    ids = lm.encode(
        " ".join(f"the {w} sat near the {v} ." for w, v in zip(["cat", "dog", "fox"] * 40, ["mat", "log", "box"] * 40))
    )
    return (ids * 10)[:n]


def logits_through(lm, m, ids, **request):
    x = torch.tensor([ids])
    with m.apply(lm, MethodContext()):
        lm.kv_request = KVRequest(**request)
        try:
            return lm.forward_logits(x, torch.ones_like(x))[0]
        finally:
            lm.kv_request = KVRequest()


def test_dense_loop_equals_model_and_generate(tiny_lm):
    ids = text(tiny_lm, 90)
    with torch.no_grad():
        ref = tiny_lm.model(input_ids=torch.tensor([ids])).logits[0]
    out = logits_through(tiny_lm, method("h2o"), ids, budget=1.0, decode_tokens=40)
    assert torch.allclose(out, ref, atol=1e-4)  # cache-vs-recompute: 40 decoded steps == one pass
    plain = tiny_lm.generate([ids], 8)
    with method("snapkv").apply(tiny_lm, MethodContext()):
        tiny_lm.kv_request = KVRequest(budget=1.0, question_tokens=5)
        looped = tiny_lm.generate([ids], 8)
        tiny_lm.kv_request = KVRequest()
    assert looped == plain


def test_chunked_prefill_equals_one_pass(tiny_lm, monkeypatch):
    ids = text(tiny_lm, 100)
    whole = logits_through(tiny_lm, method("h2o"), ids, budget=1.0, decode_tokens=0)
    monkeypatch.setattr(_driver, "PREFILL_CHUNK", 16)
    monkeypatch.setattr(_run, "STAT_ELEMENTS", 4 * 100 * 3)  # several query blocks per chunk too
    chunked = logits_through(tiny_lm, method("h2o"), ids, budget=1.0, decode_tokens=0)
    assert torch.allclose(whole, chunked, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("c, n0", [(1, 9), (5, 0), (5, 9)])
@pytest.mark.parametrize("held", [False, True])
def test_chunk_attend_equals_a_softmax_per_query_head(groups, c, n0, held):
    """The engine's grouped-query attention (a KV head's query heads as extra queries, a chunk in
    two fused parts merged by log-sum-exp) against a literal loop: every query head, every query,
    a softmax over the slots it may see (those before the chunk, its own chunk causally, held)."""
    g = torch.Generator().manual_seed(groups * 100 + c * 10 + n0 + held)
    hkv, d, n = 2, 8, n0 + c
    q = torch.randn(1, hkv * groups, c, d, generator=g)
    k, v = torch.randn(1, hkv, n, d, generator=g), torch.randn(1, hkv, n, d, generator=g)
    valid = None
    if held:
        valid = torch.rand(1, hkv, n, generator=g) > 0.4
        valid[:, :, n0:] = True  # the chunk's own tokens are always held
    with torch.no_grad():
        out = chunk_attend(q, k, v, n0, 0.3, valid)
    for head in range(hkv * groups):
        kv = head // groups
        for i in range(c):
            seen = [s for s in range(n0 + i + 1) if valid is None or bool(valid[0, kv, s])]
            weights = torch.softmax(torch.stack([q[0, head, i] @ k[0, kv, s] * 0.3 for s in seen]), 0)
            expected = sum(w * v[0, kv, s] for w, s in zip(weights, seen))
            assert torch.allclose(out[0, head, i], expected, atol=1e-5), (head, i)


def run_prefill(lm, m, ids, budget):
    """Prefill through the engine; returns the Run (caches compressed)."""
    with m.apply(lm, MethodContext()) as driver:
        lm.kv_request = KVRequest(budget=budget)
        run = driver.start()
        driver.prefill(run, ids, all_logits=False)
        lm.kv_request = KVRequest()
    return run


@pytest.mark.parametrize("name", TOKEN_METHODS + ["fastgen"])
@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5, 0.75])
def test_kept_fraction_matches_budget(tiny_lm, name, budget):
    n = 150
    run = run_prefill(tiny_lm, method(name), text(tiny_lm, n), budget)
    kept = run.kept_tokens() / n
    if name == "fastgen":  # adaptive per head: at most the budget
        assert 0 < kept <= budget + 0.02
    else:
        assert abs(kept - budget) <= 0.02
        assert all(lc.n == round(budget * n) for lc in run.layers.values())


def test_decoding_methods_hold_the_budget_while_decoding(tiny_lm):
    ids = text(tiny_lm, 100)
    for name in ("streaming_llm", "h2o", "scissorhands", "keyformer", "cam", "vatp"):
        with method(name).apply(tiny_lm, MethodContext()) as driver:
            tiny_lm.kv_request = KVRequest(budget=0.3)
            run = driver.start()
            driver.prefill(run, ids, all_logits=False)
            for t in range(12):
                driver.decode(run, [ids[t]])
            assert all(lc.n == 30 for lc in run.layers.values()), name
            driver.decode(run, ids[12:17])  # a fed chunk (a question) too
            tiny_lm.kv_request = KVRequest()
        assert all(lc.n == 30 for lc in run.layers.values()), name
    run = run_prefill(tiny_lm, method("snapkv"), ids, 0.3)  # prefill-only: the cache grows after


def test_task_asserts_kept_length_and_writes_every_metric(tiny_model, tmp_path):
    args = {
        "context_length": "200",
        "needle_samples": "2",
        "ppl_samples": "1",
        "ppl_decode_tokens": "16",
        "timing_lengths": "128",
        "timing_new_tokens": "3",
        "max_new_tokens": "4",
    }
    cells = runner.resolve(["kv_compression"], ["snapkv"], tiny_model, args, {}, limit=2)
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    m = rec["metrics"]
    for b in ("0.1", "0.25", "0.5", "0.75"):
        assert abs(m[f"kept_fraction@{b}"]["value"] - float(b)) <= 0.02
        for name in (
            "needle_accuracy",
            "needle_accuracy_query_aware",
            "ppl_ratio",
            "kl_vs_dense",
            "kv_bytes",
            "kv_bytes_fraction",
            "prefill_s@128",
            "decode_ms_per_token@128",
            "peak_mem_bytes@128",
        ):
            assert f"{name}@{b}" in m, name
    assert m["kl_vs_dense@dense"]["value"] == 0 and m["ppl_ratio@dense"]["value"] == 1
    assert m["kl_vs_dense@0.1"]["value"] > 0
    assert [r["budget"] for r in rec["details"]["pareto"]] == ["dense", "0.1", "0.25", "0.5", "0.75"]
    samples = records.read_samples(out.path)
    assert sum(1 for s in samples if "kept_fraction@0.1" in s) == 2


def test_task_fails_a_policy_that_keeps_the_wrong_length(tiny_model, tmp_path, monkeypatch):
    from harness.errors import NoEffect
    from harness.methods.kv.snapkv import SnapKV

    monkeypatch.setattr(SnapKV, "compress_prefill", lambda self, lc, run: None)  # silently does nothing
    cells = runner.resolve(
        ["kv_compression"], ["snapkv"], tiny_model, dict(registry.TASKS["kv_compression"].smoke_args), {}
    )
    with pytest.raises(NoEffect, match="should hold"):
        runner.evaluate(cells, device="cpu", out=tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_non_kv_method_gets_the_dense_row_only(tiny_model, tmp_path):
    cells = runner.resolve(
        ["kv_compression"], ["baseline"], tiny_model, dict(registry.TASKS["kv_compression"].smoke_args), {}
    )
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    assert rec["details"]["budgets"] == ["dense"] and "needle_accuracy@dense" in rec["metrics"]


def test_effect_check_fails_without_compression(tiny_lm):
    m = method("h2o")
    tiny_lm.telemetry.clear()
    with m.apply(tiny_lm, MethodContext()):
        tiny_lm.kv_request = KVRequest(budget=1.0)
        tiny_lm.generate([text(tiny_lm, 40)], 2)
        tiny_lm.kv_request = KVRequest()
        assert m.check_effect(tiny_lm, MethodContext(), None)


@pytest.mark.parametrize("lead", [0, 3])
def test_decoding_eviction_over_all_layers_follows_the_rule_step_by_step(lead):
    """evict_outside_window on every layer at once, with its recent ring, against a slow loop over
    layers and heads: keep the `window` newest, the `lead` first and the highest score of the rest;
    keys and scores move with their tokens. Prefill compresses, a fed chunk goes through the
    general case mid-way, and single tokens follow."""
    gen = torch.Generator().manual_seed(0)
    L, H, d, m, window, n0 = 3, 2, 4, 12, 5, 30
    store = SlotStore(torch.zeros(1, H, 0, d), L)
    layers = [LayerCache(None, store, slice(i, i + 1)) for i in range(L)]
    ref = [[{} for _ in range(H)] for _ in range(L)]  # position -> score, per layer and head

    def feed(positions):
        for i, lc in enumerate(layers):
            p = torch.tensor(positions, dtype=torch.long).expand(1, H, len(positions))
            lc.append(p[..., None].float().expand(1, H, len(positions), d), torch.zeros(1, H, len(positions), d), p)
            bump = torch.rand(1, H, lc.n, generator=gen)
            lc.add_score(bump)
            for h in range(H):
                for j, q in enumerate(lc.pos[0, h].tolist()):
                    ref[i][h][q] = ref[i][h].get(q, 0.0) + float(bump[0, h, j])

    def evict_all():
        everything = LayerCache(None, store, slice(None))
        everything.n = layers[0].n
        everything.state = state
        evict_outside_window(everything, m, window, lambda a, b: everything.score[:, :, a:b], lead)
        for lc in layers:
            lc.n = everything.n
        newest = max(ref[0][0])
        for i in range(L):
            for h in range(H):
                scores = ref[i][h]
                free = [q for q in scores if q <= newest - window and q >= lead]
                keep = set(scores) - set(free) | set(
                    sorted(free, key=lambda q: -scores[q])[: m - (len(scores) - len(free))]
                )
                ref[i][h] = {q: scores[q] for q in keep}

    state: dict = {}
    feed(list(range(n0)))
    evict_all()
    assert state.get("ring") == 0  # prefill leaves the ring layout
    nxt = n0
    for step in range(25):
        chunk = 4 if step == 10 else 1
        feed(list(range(nxt, nxt + chunk)))
        nxt += chunk
        evict_all()
        for i, lc in enumerate(layers):
            assert lc.n == m
            for h in range(H):
                pos = lc.pos[0, h].tolist()
                assert sorted(pos) == sorted(ref[i][h]), (step, i, h)
                assert lc.k[0, h, :, 0].tolist() == [float(q) for q in pos]  # keys moved with tokens
                assert torch.allclose(lc.score[0, h], torch.tensor([ref[i][h][q] for q in pos]), atol=1e-5)
    assert state.get("ring") not in (None, 0)  # single tokens went through the ring


def test_layers_numbered_with_gaps_share_the_store_in_layer_order(tiny_lm, monkeypatch):
    """Hybrid models number only some layers' attention (layer_idx 1, 3, ... here): the shared
    store gets one row per attention layer, and the all-layer eviction gives the same logits."""
    ids = text(tiny_lm, 60)

    def decoded():
        with method("h2o").apply(tiny_lm, MethodContext()) as driver:
            tiny_lm.kv_request = KVRequest(budget=0.3)
            run = driver.start()
            driver.prefill(run, ids[:50], all_logits=False)
            out = torch.stack([driver.decode(run, [t])[-1] for t in ids[50:]])
            tiny_lm.kv_request = KVRequest()
        return out, run

    plain, _ = decoded()
    modules = attention_modules(tiny_lm.model)
    for i, m in enumerate(modules):
        monkeypatch.setattr(m, "layer_idx", 2 * i + 1)
    gapped, run = decoded()
    assert sorted(run.layers) == [2 * i + 1 for i in range(len(modules))] and run.store.k.shape[0] == len(modules)
    assert torch.equal(plain, gapped)


@pytest.mark.parametrize("name,temperature", [("h2o", 0.0), ("keyformer", 1.0), ("cam", 0.7)])
def test_generation_reads_tokens_once_a_block_with_the_per_token_result(tiny_lm, monkeypatch, name, temperature):
    """Generated tokens stay on the device and are read every EOS_CHECK_EVERY (8) tokens: the output,
    the telemetry and the generator (sampling, Keyformer's noise, CaM's draws) end as with a read of
    every token (check_every=1), whether the end is sampled inside a block, as its last token, in a
    later block, or never."""
    ids = text(tiny_lm, 60)

    def generate(check_every, eos, max_new=20):
        monkeypatch.setattr(tiny_lm, "tokenizer", SimpleNamespace(eos_token_id=eos))
        with method(name).apply(tiny_lm, MethodContext()) as driver:
            tiny_lm.kv_request = KVRequest(budget=0.5, question_tokens=4)
            before = dict(tiny_lm.telemetry)
            try:
                out = driver.generate_one(ids, max_new, temperature, 0.9, check_every=check_every)
            finally:
                tiny_lm.kv_request = KVRequest()
            spent = {k: v - before.get(k, 0) for k, v in tiny_lm.telemetry.items() if not k.endswith("_s")}
            return out, spent, driver.generator.get_state()

    free = generate(8, None)[0]
    assert len(free) == 20
    for i in (2, 7, 11):  # inside the first block, its last token, the second block
        end = free.index(free[i])
        every, blocks = generate(1, free[i]), generate(8, free[i])
        assert every[0] == blocks[0] == free[: end + 1]
        assert blocks[1] == every[1] and every[1]["kv.decode_steps"] == end + 1  # the question + end tokens
        assert torch.equal(blocks[2], every[2])
    assert generate(8, next(t for t in range(10**6) if t not in free))[0] == free  # never sampled: max_new tokens
