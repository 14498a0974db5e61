"""Prepacked CPU weights for inference: every ``nn.Linear`` through oneDNN.

Decoding at batch 1 reads every weight once per token, so its matrix-vector products are
bound by memory bandwidth. torch's default CPU linear (MKL, weight stored (out, in)) streams
a weight at about a third of the bandwidth and on one thread only; the same product through
oneDNN, with the weight reordered once into oneDNN's blocked layout (what inductor does for
frozen CPU graphs), uses every thread and reaches about two thirds of it. Measured on a
2-core AVX-512 machine (``benchmarks/bench_decode.py``, BENCHMARKS.md): 1.6x for one row,
~2.9x for 2-4 rows (beams), still ~1.2x at 512 rows in fp32.

The packed copy costs the weights' memory once more while the context is open, and the
results differ from ``F.linear``'s by rounding only (another summation order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import torch
from torch import nn

from triform.runtime.memory import available_bytes

PACKABLE = (torch.float32, torch.bfloat16)
P = ParamSpec("P")
R = TypeVar("R")


def can_pack(model: nn.Module) -> bool:
    """Whether :func:`packed_linears` would pack ``model``: its weights are fp32 or bf16 on
    the CPU, torch has oneDNN, neither autograd nor autocast is active (the packed product
    has no backward, and autocast would change the input's dtype), and free memory holds a
    copy of the weights."""
    weight = next((p for p in model.parameters()), None)
    return (
        weight is not None
        and weight.device.type == "cpu"
        and weight.dtype in PACKABLE
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and _room_for_a_copy(model)
    )


def _room_for_a_copy(model: nn.Module) -> bool:
    """Whether free memory holds the linear weights twice over (the copy, and a margin)."""
    linear = {id(m.weight): m.weight for m in model.modules() if type(m) is nn.Linear}
    needed = 2 * sum(w.numel() * w.element_size() for w in linear.values())
    free = available_bytes("cpu")
    return free is None or free > needed


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[bool]:
    """Within the context, every ``nn.Linear`` of ``model`` computes with a packed copy of its
    weight; yields whether it packed (see :func:`can_pack`). Nested contexts reuse the outer
    one's packing. Leaving the context restores the modules and frees the copies. Tied
    weights (the LM head and the token table) are packed once."""
    if not can_pack(model):
        yield False
        return
    swapped: list[nn.Linear] = []
    packed: dict[int, torch.Tensor] = {}
    try:
        for module in model.modules():
            if type(module) is not nn.Linear or "forward" in module.__dict__:
                continue  # another module type, or already packed by an outer context
            weight = module.weight
            if weight.dtype not in PACKABLE or weight.device.type != "cpu":
                continue
            key = id(weight)
            if key not in packed:
                packed[key] = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            module.forward = _PackedForward(module, packed[key])
            swapped.append(module)
        yield True
    finally:
        for module in swapped:
            del module.forward


class _PackedForward:
    """A packed linear's forward: (..., in) -> (..., out); input of another dtype (a caller
    casting on its own) goes through the module's own forward."""

    def __init__(self, module: nn.Linear, weight: torch.Tensor) -> None:
        self.module = module
        self.weight = weight
        self.bias = None if module.bias is None else module.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype or x.device.type != "cpu":
            return nn.Linear.forward(self.module, x)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def packed_inference(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` (an inference function whose first argument is the model, called
    without autograd) inside :func:`packed_linears` of that model."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        model = args[0] if args else kwargs["model"]
        with packed_linears(model):  # type: ignore[arg-type]
            return function(*args, **kwargs)

    return wrapper
