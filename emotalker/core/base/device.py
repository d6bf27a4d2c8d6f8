"""`--device auto|cpu|cuda`, resolved in one place. Nothing touches CUDA at import time."""

from __future__ import annotations

from emotalker.core.base.errors import EmoTalkerError


def resolve_device(name: str = "auto"):
    """Return a torch.device for 'auto' (CUDA when present), 'cpu' or 'cuda[:i]'."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EmoTalkerError("--device cuda was asked for, but PyTorch sees no CUDA GPU (try --device cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise EmoTalkerError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)
