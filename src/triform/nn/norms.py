"""Normalisation layers: LayerNorm (BERT, GPT, BART) and RMSNorm (T5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triform.config import ModelConfig
from triform.runtime.cpu_paths import eager_cpu_autograd


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    """The norm the config asks for, over ``dim`` features (default: hidden size)."""
    dim = dim if dim is not None else config.hidden_size
    if config.norm == "rmsnorm":
        return RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (the same parameter and results to rounding) whose training passes on
    a CPU in fp32 go through one autograd function of a few whole-tensor passes. torch 2.13's
    CPU ``rms_norm`` is composite: its forward and the autograd graph of its pieces take
    about twice as many passes over the activations (pow, mean, rsqrt, two products, and
    each one's backward). Elsewhere, and without autograd, it is ``F.rms_norm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        if _fused_pays(x, self.weight):
            return _RMSNormFunction.apply(x, self.weight, self._eps())
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def _eps(self) -> float:
        return self.eps if self.eps is not None else torch.finfo(torch.float32).eps


def _fused_pays(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    return (
        weight is not None
        and x.dtype == weight.dtype == torch.float32
        and eager_cpu_autograd(x, weight)
    )


class _RMSNormFunction(torch.autograd.Function):
    """y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) over the last dimension;
    saves x and rstd (B..., 1), not the normalised x."""

    @staticmethod
    def forward(ctx, x, weight, eps):  # type: ignore[override]
        dim = x.shape[-1]
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., 1)
        rstd = rstd.square_().div_(dim).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd).mul_(weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        normed = x * rstd  # (..., D)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_out * normed).reshape(-1, x.shape[-1]).sum(0)
        if ctx.needs_input_grad[0]:
            # d/dx of x * rstd(x): rstd * (g - normed * mean(g * normed)), g = grad_out * w
            scaled = grad_out * weight
            mean = torch.linalg.vecdot(scaled, normed).unsqueeze_(-1).div_(x.shape[-1])
            grad_x = torch.addcmul(scaled, normed, mean, value=-1).mul_(rstd)
        return grad_x, grad_weight, None
