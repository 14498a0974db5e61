"""Output heads on top of a stack: language modelling, NSP/SOP pairs, replaced tokens."""

from __future__ import annotations

import torch
from torch import nn

from triform.config import ModelConfig
from triform.nn.feedforward import activation_fn
from triform.nn.linear import Linear
from triform.nn.losses import IGNORE_INDEX, linear_cross_entropy
from triform.nn.norms import make_norm


class LMHead(nn.Module):
    """Hidden states -> vocabulary scores. (B, L, H) -> (B, L, V)

    BERT-style heads first transform (dense H->E, activation, norm); the vocabulary
    projection may share its weight with the token embedding table (tying).
    """

    def __init__(self, config: ModelConfig, tied_embedding: nn.Embedding | None = None) -> None:
        super().__init__()
        size = config.embed_size if config.lm_head_transform else config.hidden_size
        self.transform = None
        if config.lm_head_transform:
            self.transform = nn.Sequential(
                Linear(config.hidden_size, size),
                _Activation(config.activation),
                make_norm(config, size),
            )
        self.decoder = Linear(size, config.vocab_size, bias=config.lm_head_bias)
        if tied_embedding is not None:
            self.decoder.weight = tied_embedding.weight
        self.output_scale = config.hidden_size**-0.5 if config.scale_tied_logits else 1.0

    def forward(
        self,
        hidden: torch.Tensor,
        at: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, H) -> (B, L, V); with ``at`` (B, L) bool, only the selected positions:
        (N, V), rows in row-major order of ``at`` (the transform and the vocabulary
        projection then run on N rows instead of B * L). ``weight``: the projection's weight
        as this forward sees it (a :class:`~triform.nn.embeddings.TiedTable`'s), else the
        parameter."""
        if at is not None:
            hidden = hidden[at]  # (N, H)
        hidden = self._prepare(hidden)
        if weight is None:  # the module itself, so that inference's packed forward applies
            return self.decoder(hidden)
        return self.decoder.project(hidden, weight)

    def loss(
        self, hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token cross entropy at the labelled positions (labels != -100) and the
        argmax predictions there: ``(loss, (N,) predictions)``. Only labelled positions are
        projected, in chunks, so that no (B, L, V) logits are ever held
        (:func:`~triform.nn.losses.linear_cross_entropy`).

        hidden: (B, L, H); labels: (B, L); ``weight`` as in :meth:`forward`.
        """
        at = labels != IGNORE_INDEX  # (B, L)
        selected = self._prepare(hidden[at])  # (N, H)
        decoder = self.decoder
        weight = decoder.weight if weight is None else weight
        return linear_cross_entropy(selected, weight, decoder.bias, labels[at])

    def _prepare(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., E): the transform and the output scale before the projection."""
        if self.transform is not None:
            hidden = self.transform(hidden)
        if self.output_scale != 1.0:
            hidden = hidden * self.output_scale
        return hidden


class Pooler(nn.Module):
    """The first token's hidden state through dense + tanh (BERT's pooled output)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, H)
        return torch.tanh(self.dense(hidden[:, 0]))


class PairHead(nn.Module):
    """Two-way classifier over the pooled output: NSP (BERT) or sentence order (ALBERT)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = Linear(config.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, 2)
        return self.classifier(self.dropout(pooled))


class ReplacedTokenHead(nn.Module):
    """ELECTRA's discriminator: one logit per token, "was this token replaced?". (B, L)"""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.act = _Activation(config.activation)
        self.prediction = Linear(config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.act(self.dense(hidden))).squeeze(-1)


class _Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.fn = activation_fn(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)
