"""The kv family's engine: the dense loop equals the model, chunked prefill equals one pass, the
cache holds the budget, and the kv_compression task asserts it on every sample."""
import pytest
import torch

from harness import params, records, registry, runner
from harness.interfaces import MethodContext
from harness.methods.kv import _common

registry.load()
TOKEN_METHODS = ["streaming_llm", "snapkv", "h2o", "scissorhands", "vatp", "keyformer", "cam", "kvmerger"]


def method(name, **args):
    return params.build(registry.method(name), {k: str(v) for k, v in args.items()}, name)


def text(lm, n):
    ids = lm.encode(" ".join(f"the {w} sat near the {v} ." for w, v in zip(["cat", "dog", "fox"] * 40, ["mat", "log", "box"] * 40)))
    return (ids * 10)[:n]


def logits_through(lm, m, ids, **hints):
    x = torch.tensor([ids])
    with m.apply(lm, MethodContext()):
        lm.hints = hints
        try:
            return lm._forward_logits(x, torch.ones_like(x))[0]
        finally:
            lm.hints = {}


def test_dense_loop_equals_model_and_generate(tiny_lm):
    ids = text(tiny_lm, 90)
    with torch.no_grad():
        ref = tiny_lm.model(input_ids=torch.tensor([ids])).logits[0]
    out = logits_through(tiny_lm, method("h2o"), ids, kv_budget=1.0, kv_decode_tokens=40)
    assert torch.allclose(out, ref, atol=1e-4)     # cache-vs-recompute: 40 decoded steps == one pass
    plain = tiny_lm.generate([ids], 8)
    with method("snapkv").apply(tiny_lm, MethodContext()):
        tiny_lm.hints = {"kv_budget": 1.0, "kv_question_tokens": 5}
        looped = tiny_lm.generate([ids], 8)
        tiny_lm.hints = {}
    assert looped == plain


def test_chunked_prefill_equals_one_pass(tiny_lm, monkeypatch):
    ids = text(tiny_lm, 100)
    whole = logits_through(tiny_lm, method("h2o"), ids, kv_budget=1.0, kv_decode_tokens=0)
    monkeypatch.setattr(_common, "PREFILL_CHUNK", 16)
    monkeypatch.setattr(_common, "STAT_ELEMENTS", 4 * 100 * 3)   # several query blocks per chunk too
    chunked = logits_through(tiny_lm, method("h2o"), ids, kv_budget=1.0, kv_decode_tokens=0)
    assert torch.allclose(whole, chunked, atol=1e-4)


def run_prefill(lm, m, ids, budget):
    """Prefill through the engine; returns the Run (caches compressed)."""
    with m.apply(lm, MethodContext()) as driver:
        lm.hints = {"kv_budget": budget}
        run = driver.start()
        driver.prefill(run, ids, all_logits=False)
        lm.hints = {}
    return run


@pytest.mark.parametrize("name", TOKEN_METHODS + ["fastgen"])
@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5, 0.75])
def test_kept_fraction_matches_budget(tiny_lm, name, budget):
    n = 150
    run = run_prefill(tiny_lm, method(name), text(tiny_lm, n), budget)
    kept = run.kept_tokens() / n
    if name == "fastgen":          # adaptive per head: at most the budget
        assert 0 < kept <= budget + 0.02
    else:
        assert abs(kept - budget) <= 0.02
        assert all(lc.n == round(budget * n) for lc in run.layers.values())


def test_decoding_methods_hold_the_budget_while_decoding(tiny_lm):
    ids = text(tiny_lm, 100)
    for name in ("streaming_llm", "h2o", "scissorhands", "keyformer", "cam", "vatp"):
        with method(name).apply(tiny_lm, MethodContext()) as driver:
            tiny_lm.hints = {"kv_budget": 0.3}
            run = driver.start()
            driver.prefill(run, ids, all_logits=False)
            for t in range(12):
                driver.decode(run, [ids[t]])
            assert all(lc.n == 30 for lc in run.layers.values()), name
            driver.decode(run, ids[12:17])                       # a fed chunk (a question) too
            tiny_lm.hints = {}
        assert all(lc.n == 30 for lc in run.layers.values()), name
    run = run_prefill(tiny_lm, method("snapkv"), ids, 0.3)        # prefill-only: the cache grows after


def test_task_asserts_kept_length_and_writes_every_metric(tiny_model, tmp_path):
    args = {"context_length": "200", "needle_samples": "2", "ppl_samples": "1", "ppl_decode_tokens": "16",
            "timing_lengths": "128", "timing_new_tokens": "3", "max_new_tokens": "4"}
    cells = runner.resolve(["kv_compression"], ["snapkv"], tiny_model, args, {}, limit=2)
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    m = rec["metrics"]
    for b in ("0.1", "0.25", "0.5", "0.75"):
        assert abs(m[f"kept_fraction@{b}"]["value"] - float(b)) <= 0.02
        for name in ("needle_accuracy", "needle_accuracy_query_aware", "ppl_ratio", "kl_vs_dense", "kv_bytes",
                     "kv_bytes_fraction", "prefill_s@128", "decode_ms_per_token@128", "peak_mem_bytes@128"):
            assert f"{name}@{b}" in m, name
    assert m["kl_vs_dense@dense"]["value"] == 0 and m["ppl_ratio@dense"]["value"] == 1
    assert m["kl_vs_dense@0.1"]["value"] > 0
    assert [r["budget"] for r in rec["details"]["pareto"]] == ["dense", "0.1", "0.25", "0.5", "0.75"]
    samples = records.read_samples(out.path)
    assert sum(1 for s in samples if "kept_fraction@0.1" in s) == 2


def test_task_fails_a_policy_that_keeps_the_wrong_length(tiny_model, tmp_path, monkeypatch):
    from harness.errors import NoEffect
    from harness.methods.kv.snapkv import SnapKV
    monkeypatch.setattr(SnapKV, "compress_prefill", lambda self, lc, run: None)    # silently does nothing
    cells = runner.resolve(["kv_compression"], ["snapkv"], tiny_model, dict(registry.TASKS["kv_compression"].smoke_args), {})
    with pytest.raises(NoEffect, match="should hold"):
        runner.evaluate(cells, device="cpu", out=tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_non_kv_method_gets_the_dense_row_only(tiny_model, tmp_path):
    cells = runner.resolve(["kv_compression"], ["baseline"], tiny_model, dict(registry.TASKS["kv_compression"].smoke_args), {})
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    assert rec["details"]["budgets"] == ["dense"] and "needle_accuracy@dense" in rec["metrics"]


def test_effect_check_fails_without_compression(tiny_lm):
    m = method("h2o")
    tiny_lm.telemetry.clear()
    with m.apply(tiny_lm, MethodContext()):
        tiny_lm.hints = {"kv_budget": 1.0}
        tiny_lm.generate([text(tiny_lm, 40)], 2)
        tiny_lm.hints = {}
        assert m.check_effect(tiny_lm, MethodContext(), None)
