"""What the kv method test files (test_kv_*.py) share: building a method, the sample prompt and
transformers' eager attention on it (module fixtures: a test file binds them with
`ids, eager = kv_helpers.ids, kv_helpers.eager`), and runs through the engine."""

import contextlib

import pytest
import torch
from transformers import DynamicCache

from harness import params, registry
from harness.interfaces import MethodContext
from harness.lm import KVRequest

N = 96


def method(name, **args):
    return params.build(registry.method(name), {k: str(v) for k, v in args.items()}, name)


@pytest.fixture(scope="module")
def ids(tiny_lm):
    words = " ".join(
        f"the {a} saw a {b} , then left ."
        for a, b in zip(["cat", "dog", "fox", "owl"] * 30, ["mat", "log", "box", "hat"] * 30)
    )
    return tiny_lm.encode(words)[:N]


@pytest.fixture(scope="module")
def eager(tiny_lm, ids):
    """Dense reference: eager attention probabilities [L][1, H, n, n] and the post-RoPE K/V cache."""
    model = tiny_lm.model
    model.set_attn_implementation("eager")
    try:
        cache = DynamicCache()
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    return out.attentions, [(layer.keys, layer.values) for layer in cache.layers]


@pytest.fixture(scope="module")
def zoo_lm():
    """The trained zoo:tiny-llama: what retrieval checks need (the random tiny_lm retrieves nothing)."""
    from harness.lm import LM
    from harness.models import load

    return LM(load("zoo:tiny-llama", "cpu"), batch_size=4)


def scored_run(lm, m, ids, budget=0.5):
    """Prefill with the method's statistics but no eviction: its per-token scores, uncompressed."""
    orig = type(m).compress_prefill
    type(m).compress_prefill = lambda self, lc, run: None
    try:
        with m.apply(lm, MethodContext()) as driver:
            lm.kv_request = KVRequest(budget=budget)
            run = driver.start()
            driver.prefill(run, ids, all_logits=False)
            lm.kv_request = KVRequest()
    finally:
        type(m).compress_prefill = orig
    return run


def per_kv_head(x, hkv):  # [1, H, ...] summed over each KV head's query heads
    return x.reshape(1, hkv, -1, *x.shape[2:]).sum(2)


def run_with(lm, m, ids, budget, decode=(), modifier=None):
    with (
        m.apply(lm, MethodContext()) as driver,
        modifier.apply(lm, MethodContext()) if modifier else contextlib.nullcontext(),
    ):
        lm.kv_request = KVRequest(budget=budget)
        run = driver.start()
        driver.prefill(run, ids, all_logits=False)
        for t in decode:
            driver.decode(run, [t])
        lm.kv_request = KVRequest()
    return run


def assert_holds_needle_tokens(lm, ids) -> None:
    """Calibration ids [sequences, n] hold a needle question's tokens (any key) and enough digit
    tokens: a fit calibrated on haystack alone never sees them, and codes or summarises them badly."""
    from harness.synthetic import ANSWER_PREFIX, QUESTION, Corpus

    seen = set(ids.flatten().tolist())
    key, _ = Corpus(7).fact()
    asked = lm.encode(QUESTION.format(key=key) + ANSWER_PREFIX.format(key=key))
    missing = set(asked) - seen - set(lm.encode(f" {key}:")) - set(lm.encode(f" {key}"))  # any key
    assert not missing, [lm.tokenizer.decode([t]) for t in missing]
    digits = [t for t in seen if lm.tokenizer.decode([t]).strip().isdigit()]
    assert len(digits) >= 8  # 7-digit values: groups of digits and single trailing ones


def needles_found(lm, m, budgets, depths=(10.0, 50.0, 90.0)) -> dict[float, int]:
    """budget -> how many zoo needle prompts at 512 tokens (one per depth) method m's greedy answer
    retrieves; budget 1.0 is the dense cache."""
    from harness.interfaces import MethodContext
    from harness.lm import KVRequest
    from harness.tasks.needle import Needle

    needle = Needle(context_length=(512,), max_new_tokens=8)
    found = dict.fromkeys(budgets, 0)
    for i, depth in enumerate(depths):
        b = needle.build(lm, 512, depth, 500 + i)
        for budget in found:
            with m.apply(lm, MethodContext()) as driver:
                lm.kv_request = KVRequest(budget=budget)
                out = lm.tokenizer.decode(driver.generate_one(b["ids"], 10, 0.0, 1.0))  # v2: a digit a token
                lm.kv_request = KVRequest()
            found[budget] += b["refs"][0] in out
    return found
