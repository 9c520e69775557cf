"""benchmarks/launches.py counts, on the CPU, what a GPU's prefill would launch and wait for. The
host's own copies (what `.cpu()` returns) are neither ops nor syncs there, and an op that mixes one
with the model's tensors raises, as CUDA would: so the methods that choose their blocks on the host
are checked here for keeping host and device apart, without a GPU."""

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # (launches.py imports prefill.py beside it)
    try:
        spec = importlib.util.spec_from_file_location("launches_bench", BENCHMARKS / "launches.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_host_copies_are_neither_ops_nor_syncs(bench):
    x = torch.arange(10.0)
    with bench.Counting() as c:
        h = x.cpu()  # a copy to the host: one sync
        assert isinstance(h, bench.Host)
        (h * 2 > 5).nonzero().tolist()  # on the host: nothing
        assert isinstance(h.new_empty(3), bench.Host)  # (factories keep the type)
        assert isinstance(torch.arange(3), bench.Host)  # a factory without a device: the host's
        up = torch.arange(3).to(x.device)  # one upload: a model tensor, launched, nothing waits
        assert not isinstance(up, bench.Host) and not isinstance(torch.arange(3, device=x.device), bench.Host)
        (x * 2).tolist()  # one op, and a sync to read it
        (x > 5).nonzero()  # one op whose size the host must read
    assert dict(c.syncs) == {"cpu": 1, "tolist": 1, "nonzero": 1}
    assert dict(c.ops) == {"upload": 1, "arange": 1, "mul": 1, "gt": 1, "nonzero": 1}


def test_mixing_host_and_model_tensors_raises(bench):
    x = torch.arange(10.0)
    with bench.Counting():
        h = x.cpu()
        with pytest.raises(RuntimeError, match="device mismatch"):
            x + h
        x + h.sum()  # a 0-dimensional host tensor is a scalar to CUDA too
        x[h.long()[:3]]  # and CUDA copies a host index over


def test_remapping_methods_read_only_host_copies(bench, tiny_model, monkeypatch):
    """SelfExtend and DCA choose their query blocks and parts from host positions: beyond the
    baseline's syncs, one copy of the positions per forward, whatever the number of blocks and
    parts (they read a dozen values per block from the GPU before). LongHeads' chunk choice is
    data-dependent: it also copies each block's counts of pairs per chunk, and reads nothing else."""
    from harness import attention, registry
    from harness.lm import LM
    from harness.models import load

    lm = LM(load(tiny_model, "cpu"), batch_size=1, prefill_chunk=64)
    ids = torch.randint(5, 200, (1, 512), generator=torch.Generator().manual_seed(0))  # 4x the trained 128
    base = bench.count(lm, registry.method("baseline")(), 512, ids)
    forwards = 512 // 64
    monkeypatch.setattr(attention, "QUERY_CHUNK", 16)  # 4 blocks per forward, each with several parts
    for name in ("selfextend", "dca"):
        c = bench.count(lm, registry.method(name)(), 512, ids)
        assert c.syncs["cpu"] == forwards, name
        assert c.syncs - Counter(cpu=forwards) == base.syncs, name
    c = bench.count(lm, registry.method("longheads")(), 512, ids)
    assert c.syncs["cpu"] > forwards and c.syncs - Counter(cpu=c.syncs["cpu"]) == base.syncs
