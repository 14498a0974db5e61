"""Input embeddings: token, segment and position, optionally factorized (ALBERT, ELECTRA)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.nn.linear import Linear
from triform.nn.norms import make_norm
from triform.nn.positions import SinusoidalPositions


class Embeddings(nn.Module):
    """Token (+ segment) (+ position) embeddings -> [norm] -> dropout -> [project E to H].

    ``token`` may be passed in so that an encoder and a decoder share one table; position
    ids come from :func:`make_position_ids`.
    """

    def __init__(self, config: ModelConfig, token: nn.Embedding | None = None) -> None:
        super().__init__()
        size = config.embed_size
        self.token = token if token is not None else nn.Embedding(config.vocab_size, size)
        self.segment = (
            nn.Embedding(config.type_vocab_size, size) if config.type_vocab_size > 0 else None
        )
        if config.position == "learned":
            self.position = nn.Embedding(config.max_positions + config.position_offset, size)
        elif config.position == "sinusoidal":
            self.position = SinusoidalPositions(config.max_positions, size)
        else:
            self.position = None  # relative / rotary / none act inside attention
        self.scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
        self.norm = make_norm(config, size) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.dropout)
        self.project = Linear(size, config.hidden_size) if size != config.hidden_size else None

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        sparse_grad: bool = False,
    ) -> torch.Tensor:  # (B, L) -> (B, L, H)
        """``sparse_grad``: the token table's gradient from this lookup is sparse (the rows
        looked up), for a table tied to a vocabulary projection in the same loss, whose
        dense gradient it is then added into (:func:`~triform.models.base.sparse_table_grad`).
        """
        token = self.token
        if sparse_grad:
            keep_gradient_dense(token.weight)
        x = F.embedding(input_ids, token.weight, token.padding_idx, sparse=sparse_grad)
        if self.scale != 1.0:
            x = x * self.scale
        if self.segment is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.segment(token_type_ids)
        if self.position is not None:
            x = x + self.position(position_ids)
        if self.norm is not None:
            x = self.norm(x)
        x = self.dropout(x)
        return self.project(x) if self.project is not None else x


def keep_gradient_dense(table: nn.Parameter) -> None:
    """Make sure ``table.grad`` ends dense after each backward that reaches it: a hook, added
    once, turns an accumulated sparse gradient (sparse lookups whose tied projection did not
    reach the loss) dense before optimizers, clipping or DDP's reducer read it."""
    hooks = table._post_accumulate_grad_hooks or {}
    if not any(hook is _densify_gradient for hook in hooks.values()):
        table.register_post_accumulate_grad_hook(_densify_gradient)


def _densify_gradient(table: torch.Tensor) -> None:
    if table.grad is not None and table.grad.is_sparse:
        table.grad = table.grad.to_dense()


def make_position_ids(
    config: ModelConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    past_len: int = 0,
) -> torch.Tensor:
    """Position of each token, as the position table or the rotary angles index it. (B, L)

    The one place positions are derived. Counting starts at ``config.position_offset``.
    With ``positions_from_padding`` (RoBERTa), positions count only real tokens and padding
    points at the pad row. With an ``attention_mask`` (B, past + L) positions count the real
    tokens of each row (a left-padded prompt starts at 0 at its first real token, as GPT-2's
    ``generate`` does); that the longest row fits the table is the caller's check. Otherwise
    they are ``past_len .. past_len + L``.
    """
    batch, length = input_ids.shape
    if config.positions_from_padding and config.pad_token_id is not None:
        _check_fits(config, past_len + length)
        real = input_ids.ne(config.pad_token_id).long()
        counted = (torch.cumsum(real, dim=1) - 1 + past_len + config.position_offset) * real
        return counted + (1 - real) * config.pad_token_id
    if attention_mask is not None:
        counted = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, past + L)
        return counted[:, -length:] + config.position_offset
    _check_fits(config, past_len + length)
    steps = torch.arange(past_len, past_len + length, device=input_ids.device)
    return (steps + config.position_offset).unsqueeze(0).expand(batch, length)


def _check_fits(config: ModelConfig, length: int) -> None:
    if config.position in ("learned", "sinusoidal") and length > config.max_positions:
        raise TriformError(
            f"sequence of {length} tokens is longer than the model's "
            f"{config.max_positions} positions"
        )
