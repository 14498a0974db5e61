"""oneDNN's linear kernel on the CPU: for training (:func:`onednn_linear`, with autograd,
behind every :class:`triform.nn.Linear`) and packed for inference (:func:`packed_linears`).

Decoding at batch 1 reads every weight once per token, so its matrix-vector products are
bound by memory bandwidth. torch's default CPU linear for fp32 (MKL, weight stored
(out, in)) streams a weight on one thread only, well short of the bandwidth; oneDNN's
linear kernel, given the same weight, uses every thread, and is faster from one row to
hundreds. fp32 weights are used as they are (no copy). For bf16 weights torch already calls
oneDNN; there the gain comes from reordering each weight once into oneDNN's blocked layout,
which costs a copy of the weights while the context is open. The same reordering pays in
fp32 when a decoding step has several rows (beams, batches of prompts), and
``reorder_fp32`` asks for it. The figures: BENCHMARKS.md, "Decoding"; how they were reached:
docs/performance-notes.md.

Results differ from ``F.linear``'s by rounding only (another summation order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from triform.runtime.memory import available_bytes

PACKABLE = (torch.float32, torch.bfloat16)
_HAS_KERNEL = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)
P = ParamSpec("P")
R = TypeVar("R")


def can_pack(model: nn.Module, reorder_fp32: bool = False) -> bool:
    """Whether :func:`packed_linears` would route ``model``'s linears through oneDNN: its
    weights are fp32 or bf16 on the CPU, torch has oneDNN, neither autograd nor autocast is
    active (the kernel has no backward, and autocast would change the input's dtype), and
    free memory holds the reordered copies."""
    weight = next((p for p in model.parameters()), None)
    return (
        weight is not None
        and all(is_plain_tensor(p) for p in model.parameters())
        and weight.device.type == "cpu"
        and weight.dtype in PACKABLE
        and _HAS_KERNEL
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and _room_for_copies(model, _copied(reorder_fp32))
    )


def is_plain_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a plain tensor (or parameter): not a subclass such as the
    DTensor shards of an FSDP model, which oneDNN's kernel (and tied lookups) cannot take."""
    return type(tensor.data) is torch.Tensor


def _copied(reorder_fp32: bool) -> tuple[torch.dtype, ...]:
    """The weight dtypes reordered into a copy."""
    return PACKABLE if reorder_fp32 else (torch.bfloat16,)


def _room_for_copies(model: nn.Module, copied: tuple[torch.dtype, ...]) -> bool:
    """Whether free memory holds the copied linear weights twice over (the copy, and a
    margin)."""
    linear = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}
    needed = 2 * sum(w.numel() * w.element_size() for w in linear.values() if w.dtype in copied)
    if not needed:
        return True  # nothing is copied: no need to ask the system
    free = available_bytes("cpu")
    return free is None or free > needed


@contextmanager
def packed_linears(model: nn.Module, reorder_fp32: bool = False) -> Iterator[bool]:
    """Within the context, every ``nn.Linear`` of ``model`` computes through oneDNN (bf16
    weights from a packed copy); yields whether it did (see :func:`can_pack`). Nested
    contexts reuse the outer one's. Leaving the context restores the modules and frees the
    copies. Tied weights (the LM head and the token table) are packed once."""
    if not can_pack(model, reorder_fp32):
        yield False
        return
    swapped: list[nn.Linear] = []
    packed: dict[int, torch.Tensor] = {}
    try:
        for module in model.modules():
            if not isinstance(module, nn.Linear) or "forward" in module.__dict__:
                continue  # another module type, or already packed by an outer context
            if not getattr(module, "packable", True):
                continue  # a linear that adds to its product (unmerged LoRA) keeps its forward
            weight = module.weight
            if weight.dtype not in PACKABLE or weight.device.type != "cpu":
                continue
            key = id(weight)
            if key not in packed:
                packed[key] = _kernel_weight(weight.detach(), _copied(reorder_fp32))
            module.forward = _PackedForward(module, packed[key])
            swapped.append(module)
        yield True
    finally:
        for module in swapped:
            del module.forward


def _kernel_weight(weight: torch.Tensor, copied: tuple[torch.dtype, ...]) -> torch.Tensor:
    """The weight as oneDNN's kernel takes it: reordered into its blocked layout (a copy),
    or as it is."""
    if weight.dtype in copied:
        return torch.ops.mkldnn._reorder_linear_weight(weight)
    return weight.contiguous()


class _PackedForward:
    """A packed linear's forward: (..., in) -> (..., out); input of another dtype (a caller
    casting on its own) goes through the module's own forward."""

    def __init__(self, module: nn.Linear, weight: torch.Tensor) -> None:
        self.module = module
        self.weight = weight
        self.bias = None if module.bias is None else module.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype or x.device.type != "cpu":
            return type(self.module).forward(self.module, x)
        return _linear_pointwise(x, self.weight, self.bias)


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN's kernel for fp32 on the CPU, with
    autograd. (..., in), (out, in) -> (..., out)

    At the shapes of a training step the kernel is faster than torch's MKL path for the
    forward product and for the input gradient (the same kernel given the weight's
    transpose as a view, no copy). The weight gradient goes through the kernel where the
    layer takes more features than it gives (a feed-forward block's down projection), and
    stays a plain matmul elsewhere, where MKL's is faster (BENCHMARKS.md, "Training";
    docs/performance-notes.md). Anything else
    (other dtypes, autocast, other devices, DTensor shards, ``torch.compile``) is
    ``F.linear``; results differ from it by rounding only (another summation order).
    """
    if not _onednn_applies(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return _OneDNNLinear.apply(x, weight, bias)
    return _linear_pointwise(x, weight, bias)


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        _HAS_KERNEL
        and x.dtype == weight.dtype == torch.float32
        and x.device.type == weight.device.type == "cpu"
        and (bias is None or (bias.dtype == torch.float32 and is_plain_tensor(bias)))
        and x.numel() > 0
        and weight.is_contiguous()
        and is_plain_tensor(x)
        and is_plain_tensor(weight)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def _linear_pointwise(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """The forward and the input gradient through oneDNN, the weight gradient a matmul."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear_pointwise(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # (N, out) @ (out, in): the kernel with weight.T
            grad_x = _linear_pointwise(grad_rows, weight.t(), None).view(x.shape)
        if ctx.needs_input_grad[1]:  # (out, N) @ (N, in)
            rows = x.reshape(-1, x.shape[-1])
            if weight.shape[1] > weight.shape[0]:  # wider than tall: oneDNN's kernel
                grad_weight = _linear_pointwise(grad_rows.t(), rows.t(), None)
            else:
                grad_weight = grad_rows.t() @ rows
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def packed_inference(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` (an inference function whose first argument is the model, called
    without autograd) inside :func:`packed_linears` of that model."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        model = args[0] if args else kwargs["model"]
        with packed_linears(model):  # type: ignore[arg-type]
            return function(*args, **kwargs)

    return wrapper
