"""The new heads put on a pretrained body. Each is small and starts from Normal(0, std)
weights and zero biases; all of them are trained at ``optim.lr``.

- :class:`SequenceHead`: a pooled representation -> class scores, a regression value or
  (with one output) a multiple-choice score. Optionally dense + tanh first (RoBERTa, BART;
  dense + GELU for ELECTRA, as its paper's and transformers' classification head).
- :class:`TokenHead`: every token -> tag scores (tagging).
- :class:`SpanHead`: every token -> start and end scores (extractive QA).
"""

from __future__ import annotations

import torch
from torch import nn


def init_head(module: nn.Module, std: float) -> None:
    """Normal(0, ``std``) weights and zero biases for every linear layer of ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


ACTIVATIONS = {"tanh": torch.tanh, "gelu": nn.functional.gelu}


class SequenceHead(nn.Module):
    """(B, H) -> (B, num_outputs): ``[dropout -> dense -> activation ->] dropout -> linear``.

    ``transform`` adds the dense layer that RoBERTa's, BART's (tanh) and ELECTRA's (GELU)
    classification heads have (BERT's pooler already did it; GPT's head is the linear layer
    alone).
    """

    def __init__(
        self,
        hidden_size: int,
        num_outputs: int,
        dropout: float,
        transform: bool,
        std: float,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size) if transform else None
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)
        init_head(self, std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            pooled = self.activation(self.dense(self.dropout(pooled)))
        return self.out(self.dropout(pooled))


class TokenHead(nn.Module):
    """(B, L, H) -> (B, L, num_labels): dropout -> linear on every token."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, std: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)
        init_head(self, std)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))


class SpanHead(nn.Module):
    """(B, L, H) -> start scores (B, L) and end scores (B, L)."""

    def __init__(self, hidden_size: int, std: float) -> None:
        super().__init__()
        self.out = nn.Linear(hidden_size, 2)
        init_head(self, std)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.out(hidden).unbind(-1)
        return start, end
