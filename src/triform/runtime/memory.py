"""Refusing a model that cannot fit before allocating it.

The parameters are counted on the ``meta`` device (no memory), and the bytes the model
needs — 4 per fp32 parameter for inference, 16 for training with AdamW (weights, gradients,
two moments) — are compared with the memory the device has free. Activations come on top,
so this catches the impossible (a damaged ``config.json``, a typo in a size), not every
out-of-memory.
"""

from __future__ import annotations

import os

import torch

from triform.config import ModelConfig
from triform.errors import TriformError

BYTES_PER_PARAMETER = {"inference": 4, "training": 16}


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory of ``device`` in bytes (``None`` when it cannot be told)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def count_parameters(config: ModelConfig) -> int:
    """The parameters of the model ``config`` describes, counted without allocating."""
    from triform.models import build_model

    return build_model(config, device="meta").num_parameters()


def check_model_fits(
    config: ModelConfig, device: torch.device | str = "cpu", use: str = "inference"
) -> int:
    """Raise :class:`TriformError` when the model cannot fit in ``device``'s free memory for
    ``use`` (``"inference"`` or ``"training"``); returns its parameter count."""
    params = count_parameters(config)
    needed = params * BYTES_PER_PARAMETER[use]
    free = available_bytes(device)
    if free is not None and needed > free:
        raise TriformError(
            f"a {config.family} model of {params:,} parameters needs {needed / 2**30:.1f} GiB "
            f"for {use}, but {torch.device(device).type} has {free / 2**30:.1f} GiB free"
        )
    return params
