"""Numeric precision of the forward pass: fp32, or bf16 / fp16 autocast.

``"auto"`` picks bf16 autocast on a CUDA device that supports it and fp32 everywhere else;
bf16 on CPU is used only when asked for. Weights and optimizer state stay fp32 either way.
fp16 (CUDA only) needs loss scaling: use :func:`grad_scaler`.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from triform.errors import ConfigError, TriformError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matmuls natively (CPU always can, slowly on old CPUs)."""
    kind = _device_type(device)
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "cpu"


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``"auto" | "fp32" | "bf16" | "fp16"`` into the concrete choice for ``device``.

    A precision the device cannot run raises :class:`TriformError`.
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"train.precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
        )
    kind = _device_type(device)
    if precision == "auto":
        return "bf16" if kind == "cuda" and bf16_supported(device) else "fp32"
    if precision == "bf16" and kind not in ("cpu", "cuda"):
        raise TriformError(f"train.precision bf16 is not supported on {kind}")
    if precision == "bf16" and not bf16_supported(device):
        raise TriformError("train.precision bf16: this GPU has no bf16 support; use fp16 or fp32")
    if precision == "fp16" and kind != "cuda":
        raise TriformError(f"train.precision fp16 needs a CUDA device, not {kind}")
    return precision


def autocast_context(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The context to run forward passes (and losses) in: ``torch.autocast`` for bf16 or
    fp16, a no-op for fp32. ``precision`` should come from :func:`resolve_precision`."""
    if precision in ("fp32", "auto"):
        precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device_type(device), dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (a pass-through otherwise): ``scale(loss)``,
    ``unscale_(opt)`` before clipping, ``step(opt)``, ``update()``."""
    return torch.amp.GradScaler(_device_type(device), enabled=precision == "fp16")
