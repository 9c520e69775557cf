"""Pieces shared by several backbones: the fc1 → exact GELU → fc2 MLP of the ViTs (DINO and
VideoMAE use the same parameter names), reading a checkpoint into a state dict, loading it with
a clear error instead of a traceback, and per-channel input normalisation."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import UserError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def normalise(x: torch.Tensor, stats) -> torch.Tensor:
    """(x - mean) / std per channel of [N, 3, H, W]; stats = (means, stds)."""
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
    return (x - mean) / std


def read_checkpoint(path):
    """What a weights file holds: a plain checkpoint read with weights_only, else a TorchScript
    archive's state dict (OpenAI CLIP). UserError when it is neither (a truncated download, another
    format, a pickle that needs code to load)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:
        try:
            return torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            reason = (str(first).strip().splitlines() or [type(first).__name__])[0]
            raise UserError(
                f"{path} is not a PyTorch checkpoint readable with torch.load(weights_only=True), nor a "
                f"TorchScript archive ({reason}); a file holding objects other than tensors must be re-saved "
                f"as a state dict with torch.save"
            ) from None


def load_state(path, prefix: str = "") -> dict:
    """A state dict from a plain checkpoint (weights only) or a TorchScript archive (OpenAI CLIP)."""
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))  # wrapped checkpoints (ViCLIP: "model")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_checked(net: nn.Module, state: dict, task: str, path, layout: str = "the expected layout") -> nn.Module:
    """load_state_dict that names the file and the first mismatching keys (or shapes) instead of a traceback."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same names, other shapes (e.g. RAFT-small's weights for RAFT-large)
        shapes = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise UserError(f"{task}: {path} does not match {layout} ({'; '.join(shapes[:2]) or e})") from None
    if missing or unexpected:
        raise UserError(f"{task}: {path} does not match {layout} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net


def load_into(net: nn.Module, path, prefix: str, task: str) -> nn.Module:
    return load_checked(net, load_state(path, prefix), task, path)
