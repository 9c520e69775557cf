"""git_state: the commit and whether the code (not the committed records) differs from it; the
device-synchronized clock of timings on a GPU."""

import subprocess

import harness
from harness import provenance


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_rewritten_records_do_not_make_the_tree_dirty_but_code_changes_do(tmp_path, monkeypatch):
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "__init__.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(harness, "__file__", str(tmp_path / "harness" / "__init__.py"))

    def state():
        provenance.git_state.cache_clear()
        return provenance.git_state()

    try:
        assert state()["git_dirty"] is False and len(state()["git_commit"]) == 40
        (tmp_path / "results" / "r.json").write_text('{"rerun": true}\n')
        assert state()["git_dirty"] is False
        (tmp_path / "harness" / "__init__.py").write_text("x = 2\n")
        assert state()["git_dirty"] is True
    finally:
        provenance.git_state.cache_clear()


def test_cpu_peak_memory_is_per_cell_where_linux_allows_it():
    """In a fresh interpreter (a long test process may reuse freed pages and never raise its RSS):
    a 300 MiB peak in one cell is gone from the next cell's peak after the reset."""
    import json
    import subprocess
    import sys

    script = (
        "import json, numpy as np\n"
        "from harness import provenance as p\n"
        "p.reset_peak_memory('cpu')\n"
        "big = np.ones(300 * 2**20 // 8)\n"
        "first = p.peak_memory('cpu')\n"
        "del big\n"
        "p.reset_peak_memory('cpu')\n"
        "print(json.dumps([first, p.peak_memory('cpu')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    first, second = json.loads(out.stdout.strip().splitlines()[-1])
    if first["max_rss_scope"] == "process":  # no /proc/self/clear_refs: a documented upper bound
        assert second["max_rss_bytes"] >= first["max_rss_bytes"]
    else:
        assert first["max_rss_scope"] == second["max_rss_scope"] == "cell"
        assert first["max_rss_bytes"] - second["max_rss_bytes"] > 200 * 2**20  # the earlier peak is gone


def test_device_clock_synchronizes_a_gpu_before_reading_the_time(monkeypatch):
    """CUDA runs asynchronously: a timing on a GPU must wait for the queued work (else it times
    the host enqueuing kernels). On the CPU the clock is perf_counter itself."""
    import time

    import torch

    from harness.provenance import device_clock

    assert device_clock("cpu") is time.perf_counter
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    clock = device_clock("cuda:1")
    t0 = clock()
    assert clock() >= t0 and synced == [torch.device("cuda:1")] * 2
