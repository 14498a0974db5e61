"""Refusing a model that cannot fit before allocating it.

The parameters are counted on the ``meta`` device (no memory), and the bytes the model
needs — 4 per fp32 parameter for inference, 16 for training with AdamW (weights, gradients,
two moments) — are compared with the memory the device has free. Activations come on top,
so this catches the impossible (a damaged ``config.json``, a typo in a size), not every
out-of-memory.
"""

from __future__ import annotations

import torch

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.models import build_model
from triform.runtime.memory import available_bytes

BYTES_PER_PARAMETER = {"inference": 4, "training": 16}


def count_parameters(config: ModelConfig) -> int:
    """The parameters of the model ``config`` describes, counted without allocating."""
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
