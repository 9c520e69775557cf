"""What ran: versions, code commit, machine. Recorded in every record's `provenance`."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import harness


@lru_cache(maxsize=1)
def git_state() -> dict:
    root = Path(harness.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        # dirty = the code differs from the commit; the committed result records (results/, ci/baseline/)
        # change whenever a reference run rewrites them, which says nothing about the code that ran
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                 ".", ":(exclude)results", ":(exclude)ci/baseline"],
                                capture_output=True, text=True, timeout=10)
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
    info = {"harness_version": harness.__version__, **git_state(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "device": device, "threads": torch.get_num_threads(), "argv": sys.argv[1:]}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def reset_peak_memory(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> dict:
    """Peak memory of the cell: GPU bytes allocated by PyTorch since the cell started; on CPU the
    process's peak resident set so far (an upper bound for the cell: it includes earlier cells)."""
    import resource

    import torch
    out = {"max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.startswith("cuda"):
        out["peak_gpu_mem_bytes"] = torch.cuda.max_memory_allocated(torch.device(device))
    return out
