"""Choosing the device a command runs on."""

from __future__ import annotations

import torch

from triform.errors import TriformError


def pick_device(name: str, setting: str = "train.device") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device name, checked; errors
    name the ``setting`` the value came from."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TriformError(f"{setting}: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TriformError(f"{setting} is cuda but no GPU is available")
    return device
