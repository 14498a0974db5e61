"""Where triform's own CPU training paths apply (explicit attention, the fused RMSNorm):
eager autograd on a CPU. Graphs that ``torch.compile`` traces get inductor's kernels instead."""

from __future__ import annotations

import torch


def eager_cpu_autograd(*tensors: torch.Tensor) -> bool:
    """Whether an operation on ``tensors`` (on the first one's device) is recorded by
    autograd on a CPU, outside a graph ``torch.compile`` is tracing."""
    return (
        tensors[0].device.type == "cpu"
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
        and not torch.compiler.is_compiling()
    )
