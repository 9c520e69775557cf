"""The CPU prefill benchmark reads its peak one chunk at a time (benchmarks/prefill.py); the
windowed sum must equal the peak of one profile taken over the whole prefill."""

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("prefill_bench", ROOT / "benchmarks" / "prefill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _whole_profile_peak(bench, lm, method, length, ids) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        bench.prefill(lm, method, length, ids)
    return bench.running_peak(prof, {"current": 0, "peak": 0})["peak"]  # one window over the whole prefill


def test_windowed_cpu_peak_equals_one_profile(tiny_model):
    from harness import registry
    from harness.lm import LM
    from harness.models import load

    bench = _bench()
    lm = LM(load(tiny_model, "cpu"), batch_size=1, prefill_chunk=32)  # 4 chunks: 4 windows
    ids = torch.randint(5, 200, (1, 128))
    for name in ("baseline", "selfextend"):
        method = registry.method(name)()
        bench.prefill(lm, method, 128, ids)  # warm-up: lazily built buffers are not the prefill's
        windowed = bench.cpu_peak_bytes(lm, method, 128, ids)
        assert windowed > 0
        assert windowed == _whole_profile_peak(bench, lm, method, 128, ids), name
