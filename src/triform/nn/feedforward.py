"""Position-wise feed-forward network, plain or gated (T5 v1.1 style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triform.config import ModelConfig
from triform.nn.linear import Linear

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def activation_fn(name: str):
    """The elementwise function behind an activation name (``gated-`` prefix stripped)."""
    return _ACTIVATIONS[name.removeprefix("gated-")]


class FeedForward(nn.Module):
    """``down(act(up(x)))``, or ``down(act(gate(x)) * up(x))`` for gated activations."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.ffn_size, config.bias
        self.gated = config.activation.startswith("gated-")
        self.act = activation_fn(config.activation)
        self.gate = Linear(hidden, inner, bias=bias) if self.gated else None
        self.up = Linear(hidden, inner, bias=bias)
        self.down = Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, L, H)
        if self.gate is not None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))
