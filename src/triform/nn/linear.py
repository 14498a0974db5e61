"""The linear layer of every triform model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triform.runtime.packed import onednn_linear


class Linear(nn.Linear):
    """``nn.Linear`` whose training passes go through
    :func:`~triform.runtime.packed.onednn_linear`: the same parameters and names, faster on
    the CPU in fp32 (oneDNN's kernel for the forward, the input gradient and, for a layer
    with more inputs than outputs, the weight gradient), the same
    results to rounding. Forwards without autograd stay ``F.linear``, bit for bit what
    ``transformers`` computes (inference entry points pack the model on their own:
    :func:`~triform.runtime.packed.packed_linears`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return self.project(x, self.weight)

    def project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer with ``weight`` (out, in) in place of its own parameter: a tied table as
        one forward hands it on (:class:`~triform.nn.embeddings.TiedTable`), with this
        layer's bias. (..., in) -> (..., out). For the layer's own weight call the module:
        inference's :func:`~triform.runtime.packed.packed_linears` replaces its forward,
        not this."""
        if torch.is_grad_enabled():
            return onednn_linear(x, weight, self.bias)
        return F.linear(x, weight, self.bias)
