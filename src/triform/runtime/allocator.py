"""Freed memory kept for reuse: glibc's malloc tuned for a training process (and the run's
other process-wide setting, its thread count: :func:`apply_process_settings`).

By default glibc serves every block of 32 MB or more (and, until its threshold has adapted,
smaller ones) straight from the kernel with ``mmap`` and gives it back on ``free``; the next
step's block of the same size is then faulted in page by page again, zero-filled by the
kernel. A training step allocates and frees the same large blocks every time (a GPT-2 token
table's gradient is 154 MB, its bf16 copy 77 MB, a chunk of logits 100 MB), so a CPU step
spends a noticeable part of its time in page faults. Serving every block from malloc's heap
and keeping freed memory there (``mallopt``: no mmap'd blocks, trim only above 1 GiB free)
lets the next step reuse pages already mapped: the allocators Intel recommends for PyTorch
on CPUs (jemalloc, tcmalloc) are configured for the same reason. What it brings to a
training step: BENCHMARKS.md, "Training" (the "both kept" columns leave it out).

The setting is process-wide and lasts for the process; a training run (``triform
pretrain``, ``triform finetune``, or their Python functions) applies it unless
``train.keep_freed_memory = false``. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap and keep up to 1 GiB of freed
    memory there for reuse; True if applied (glibc), False where there is no ``mallopt``."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def apply_process_settings(threads: int | None, keep_freed: bool) -> None:
    """A training run's process-wide settings (``train.threads``, ``train.keep_freed_memory``):
    torch's intra-op thread count when given, and :func:`keep_freed_memory` when asked."""
    if threads:
        torch.set_num_threads(threads)
    if keep_freed:
        keep_freed_memory()
