"""A row's numbers do not depend on what shares its batch: for every `lm` method (its smoke
configuration, on the zoo model: trained, so a changed rotation changes its numbers, where a
random-init model barely notices), the log-likelihoods and greedy tokens of prompts of different
lengths batched together (padded) equal those of each prompt alone. Length-dependent rules (dynamic
NTK, LongRoPE's short/long switch) must use each row's own length, never the batch's longest."""

import contextlib

import pytest
import torch

from harness import params, registry
from harness.interfaces import MethodContext
from harness.lm import LM
from harness.models import load

ZOO = "zoo:tiny-llama"  # trained at 512 positions
TARGET = 2048  # the task's longest context: 4x the trained length, so scaled methods act
# the fast suite: rules that depend on the sequence length (the kv methods, which decode token by
# token and take about a minute each here, run with every other lm method in the slow suite)
FAST = {"dynamic_ntk", "yarn", "selfextend"}
METHODS = [
    n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
    for n, c in sorted(registry.all_methods().items())
    # methods that refuse a text-only model (look_m: a vision-language model's image tokens) are
    # tested on their own models (tests/test_kv_look_m.py), as the matrix does (smoke_not_with)
    if c.kind == "lm" and "needle" not in getattr(c, "smoke_not_with", ())
]


def _lm(model: str, batch: int) -> LM:
    return LM(load(model, "cpu"), batch_size=batch, prefill_chunk=0)


def _outputs(lm, method, prompts, conts):
    with method.apply(lm, MethodContext(target_length=TARGET, seed=0)) if method else contextlib.nullcontext():
        ll = [r.logprob for r in lm.loglikelihood(list(zip(prompts, conts)))]
        gen = lm.generate(prompts, 4)
    return ll, gen


@pytest.mark.parametrize("name", METHODS)
def test_batched_rows_equal_rows_alone(name, tiny_model_with, tmp_path, monkeypatch):
    cls = registry.method(name)
    model = tiny_model_with(**cls.smoke_model_config) if cls.smoke_model_config else ZOO
    args = {k: v.replace("{model}", model) for k, v in cls.smoke_args.items()}
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "artifacts"))
    method = params.build(cls, args, name)
    probe = _lm(model, 1)
    if method.needs_fit(probe, MethodContext(target_length=TARGET)):
        pytest.skip(f"{name} needs a fit stage (its artifact is tested by test_matrix)")
    g = torch.Generator().manual_seed(0)
    vocab = probe.tokenizer.vocab_size
    lengths = (700, 60, 300)  # one row beyond the trained 512 positions, the others inside it
    prompts = [torch.randint(30, vocab - 1, (n,), generator=g).tolist() for n in lengths]
    conts = [torch.randint(30, vocab - 1, (3,), generator=g).tolist() for _ in lengths]
    lm = _lm(model, 3)
    batched = _outputs(lm, method, prompts, conts)
    lm.batch_size = 1
    alone = [_outputs(lm, method, [p], [c]) for p, c in zip(prompts, conts)]
    for i in range(len(prompts)):
        assert batched[0][i] == pytest.approx(alone[i][0][0], rel=1e-5, abs=1e-4), f"{name}: log-likelihood of row {i}"
        assert batched[1][i] == alone[i][1][0], f"{name}: greedy tokens of row {i}"
