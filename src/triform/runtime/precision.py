"""Numeric precision of the forward pass: fp32, or bf16 / fp16 autocast.

``"auto"`` picks bf16 autocast where the hardware does bf16 natively - a CUDA GPU of compute
capability 8.0 (Ampere) or newer, a CPU with AMX or AVX512-BF16 instructions (detected at run
time) - and fp32 everywhere else (:func:`precision_reason` says why). Weights and optimizer
state stay fp32 either way. fp16 (CUDA only) needs loss scaling: use :func:`grad_scaler`.
"""

from __future__ import annotations

import contextlib
import functools
from contextlib import AbstractContextManager
from pathlib import Path

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


# /proc/cpuinfo flags of native bf16 arithmetic, by name
_CPU_BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}


@functools.cache
def cpu_bf16_feature() -> str | None:
    """The CPU's native bf16 instruction set ("AMX" or "AVX512-BF16"), or None.

    Read from the ``flags`` of ``/proc/cpuinfo`` (Linux); elsewhere from torch's dispatch
    level (``torch.backends.cpu.get_cpu_capability()``), which names AMX but not AVX512-BF16.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = None
    if text is not None:
        flags: set[str] = set()
        for line in text.splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
                break
        for flag, name in _CPU_BF16_FLAGS.items():
            if flag in flags:
                return name
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return "AMX" if "AMX" in capability.upper() else None


def auto_precision(device: torch.device | str) -> str:
    """What ``"auto"`` means on ``device``: "bf16" where bf16 is native, else "fp32"."""
    kind = _device_type(device)
    if kind == "cuda":
        native = torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
        return "bf16" if native else "fp32"
    if kind == "cpu":
        return "bf16" if cpu_bf16_feature() is not None else "fp32"
    return "fp32"


def precision_reason(device: torch.device | str) -> str:
    """Why ``"auto"`` chose what it did on ``device``, in a few words (for the run's log)."""
    kind = _device_type(device)
    if kind == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        native = "native bf16" if major >= 8 else "no native bf16"
        return f"auto: CUDA compute capability {major}.{minor}, {native}"
    if kind == "cpu":
        feature = cpu_bf16_feature()
        return f"auto: CPU has {feature}" if feature else "auto: CPU without native bf16"
    return f"auto: {kind}"


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
        return auto_precision(device)
    if precision == "bf16" and kind not in ("cpu", "cuda"):
        raise TriformError(f"train.precision bf16 is not supported on {kind}")
    if precision == "bf16" and not bf16_supported(device):
        raise TriformError("train.precision bf16: this GPU has no bf16 support; use fp16 or fp32")
    if precision == "fp16" and kind != "cuda":
        raise TriformError(f"train.precision fp16 needs a CUDA device, not {kind}")
    return precision


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` produces: the autocast dtype when autocast is on."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


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
