"""What ran: versions, code commit, machine. Recorded in every record's `provenance`."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import harness


@lru_cache(maxsize=1)
def git_state() -> dict:
    root = Path(harness.__file__).resolve().parent.parent
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        # dirty = the code differs from the commit; the committed result records (results/, ci/baseline/)
        # change whenever a reference run rewrites them, which says nothing about the code that ran
        status = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)results",
                ":(exclude)ci/baseline",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    if commit is None and os.environ.get("HARNESS_GIT_COMMIT"):
        # a copy of the tree without .git (e.g. shipped to a GPU machine): the sender names the commit
        commit, dirty = os.environ["HARNESS_GIT_COMMIT"], None
    return {"git_commit": commit, "git_dirty": dirty}


def environment(device: str) -> dict:
    import torch
    import transformers

    info = {
        "harness_version": harness.__version__,
        **git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": device,
        "threads": torch.get_num_threads(),
        "argv": sys.argv[1:],
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


_RSS_RESET = {"cell": False}


def device_clock(device):
    """time.perf_counter, after waiting for the device's queued work when it is a GPU: CUDA runs
    asynchronously, so an unsynchronized reading times the host enqueuing kernels, not the work."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def reset_peak_memory(device: str) -> None:
    """Start a cell's peak-memory window: CUDA's allocator peak, and on Linux the process's peak
    resident set (writing 5 to /proc/self/clear_refs resets VmHWM), so a sweep worker or a
    multi-method eval does not report an earlier cell's peak."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _RSS_RESET["cell"] = True
    except OSError:
        _RSS_RESET["cell"] = False


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory(device: str) -> dict:
    """Peak memory of the cell: GPU bytes allocated by PyTorch since the cell started; on CPU the
    peak resident set since the cell started where Linux lets it be reset (`max_rss_scope: cell`),
    else the process's peak so far (`process`: an upper bound that includes earlier cells)."""
    import resource

    import torch

    hwm = _vm_hwm_bytes() if _RSS_RESET["cell"] else None
    out = {
        "max_rss_bytes": hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "max_rss_scope": "cell" if hwm is not None else "process",
    }
    if device.startswith("cuda"):
        out["peak_gpu_mem_bytes"] = torch.cuda.max_memory_allocated(torch.device(device))
    return out
