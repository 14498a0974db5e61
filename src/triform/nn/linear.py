"""The linear layer of every triform model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triform.runtime.packed import onednn_linear


class Linear(nn.Linear):
    """``nn.Linear`` whose training passes go through
    :func:`~triform.runtime.packed.onednn_linear`: the same parameters and names, faster on
    the CPU in fp32 (oneDNN's kernel for the forward and the input gradient), the same
    results to rounding. Forwards without autograd stay ``F.linear``, bit for bit what
    ``transformers`` computes (inference entry points pack the model on their own:
    :func:`~triform.runtime.packed.packed_linears`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if torch.is_grad_enabled():
            return onednn_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
