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
        tie: TiedTable | None = None,
    ) -> torch.Tensor:  # (B, L) -> (B, L, H)
        """``tie``: this forward's :class:`TiedTable`; the token lookup goes through it when
        it holds this module's table."""
        token = self.token
        if tie is not None and tie.holds(token.weight):
            x = tie.lookup(input_ids, token.padding_idx)
        else:
            x = F.embedding(input_ids, token.weight, token.padding_idx)
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


class TiedTable:
    """A token table tied to a vocabulary projection, as one training forward that runs the
    projection sees it: lookups go through :meth:`lookup`, and the projection uses
    :attr:`weight`, the table as the last lookup handed it on.

    In the backward the projection's dense (V, E) gradient flows back through the lookups,
    last to first, and each adds its rows into it in place, so the table receives its whole
    gradient once. The default lookup gradient would first allocate and zero a (V, E) tensor
    (154 MB for GPT-2, mostly page faults on a CPU) and autograd would then
    sum the two into a third; a sparse lookup gradient avoids the zeros, but torch adds sparse
    rows to a dense gradient out of place (one (V, E) copy per lookup). Hooks on the table
    (DDP's reducer, clipping, user hooks) see the complete gradient, as with plain lookups.
    """

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.weight = table  # the table as the next lookup, or the projection, takes it

    def holds(self, table: torch.Tensor) -> bool:
        return table is self.table

    def lookup(self, input_ids: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        """``F.embedding(input_ids, table, padding_idx)``: (B, L) -> (B, L, E)."""
        rows, self.weight = _TiedLookup.apply(input_ids, self.weight, padding_idx)
        return rows


class _TiedLookup(torch.autograd.Function):
    """Rows of the table (B, L, E), and the table itself (a view) for the next user."""

    @staticmethod
    def forward(ctx, input_ids, table, padding_idx):  # type: ignore[override]
        ctx.save_for_backward(input_ids)
        ctx.padding_idx = padding_idx
        ctx.table_shape = table.shape
        return F.embedding(input_ids, table, padding_idx), table.view_as(table)

    @staticmethod
    def backward(ctx, grad_rows, grad_table):  # type: ignore[override]
        (input_ids,) = ctx.saved_tensors
        ids = input_ids.reshape(-1)  # (N,)
        rows = grad_rows.reshape(-1, grad_rows.shape[-1])  # (N, E)
        if ctx.padding_idx is not None:  # F.embedding's rule: the padding row learns nothing
            rows = rows.masked_fill((ids == ctx.padding_idx).unsqueeze(1), 0)
        if grad_table is None:  # the projection did not reach the loss after all
            grad_table = rows.new_zeros(ctx.table_shape)
        elif torch.is_grad_enabled() or not grad_table.is_contiguous():
            # a differentiable backward (create_graph) keeps its inputs intact; an odd layout
            # gets a fresh, contiguous sum
            return None, grad_table.index_add(0, ids, rows.to(grad_table.dtype)), None
        # in place: the incoming gradient is the projection's own, held by nobody else
        return None, grad_table.index_add_(0, ids, rows.to(grad_table.dtype)), None


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
