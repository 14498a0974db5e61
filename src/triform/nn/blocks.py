"""One Transformer layer: self-attention, optional cross-attention, feed-forward, each wrapped
in a residual connection with the norm before (pre-norm) or after (post-norm) it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from triform.config import ModelConfig
from triform.nn.attention import Attention
from triform.nn.cache import KVCache
from triform.nn.feedforward import FeedForward
from triform.nn.masks import AttentionMask
from triform.nn.norms import make_norm


class Block(nn.Module):
    """A Transformer layer. ``cross_attention`` adds attention over an encoder output."""

    def __init__(self, config: ModelConfig, *, cross_attention: bool = False) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.self_attn = Attention(config)
        self.self_norm = make_norm(config)
        self.cross_attn = Attention(config, cross=True) if cross_attention else None
        self.cross_norm = make_norm(config) if cross_attention else None
        self.ffn = FeedForward(config)
        self.ffn_norm = make_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(
        self, x: torch.Tensor, norm: nn.Module, sublayer: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))

    def forward(
        self,
        x: torch.Tensor,
        self_mask: AttentionMask,
        *,
        context: torch.Tensor | None = None,
        context_mask: AttentionMask | None = None,
        rotary: tuple | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        attentions: list[torch.Tensor] | None = None,
        cross_attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, L, H) -> (B, L, H). Given lists, the self- and cross-attention probabilities
        are appended to them (see :class:`~triform.nn.attention.Attention`)."""
        x = self._residual(
            x,
            self.self_norm,
            lambda h: self.self_attn(
                h, self_mask, rotary=rotary, cache=cache, layer=layer, weights=attentions
            ),
        )
        if self.cross_attn is not None:
            x = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(
                    h,
                    context_mask,
                    context=context,
                    cache=cache,
                    layer=layer,
                    weights=cross_attentions,
                ),
            )
        return self._residual(x, self.ffn_norm, self.ffn)
