"""A stack of blocks with everything they share: masks built once per forward pass,
T5's relative position bias, rotary tables, cross-layer sharing (ALBERT) and the final norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from triform.config import ModelConfig
from triform.nn.blocks import Block
from triform.nn.cache import KVCache
from triform.nn.masks import AttentionMask, build_mask
from triform.nn.norms import make_norm
from triform.nn.positions import RelativePositionBias, RotaryEmbedding
from triform.runtime.precision import compute_dtype


@dataclass
class StackOutput:
    """What a stack returns. ``hidden_states``: the input of every layer, then the final
    output (when asked); ``attentions`` / ``cross_attentions``: per layer, the self- and
    cross-attention probabilities (B, heads, L, L_keys) / (B, heads, L, S) (when asked);
    ``cache``: the KV cache, grown by this call (when one is used)."""

    last_hidden_state: torch.Tensor
    hidden_states: list[torch.Tensor] | None = None
    attentions: list[torch.Tensor] | None = None
    cross_attentions: list[torch.Tensor] | None = None
    cache: KVCache | None = None


class Stack(nn.Module):
    """``num_layers`` blocks. ``causal`` makes it a decoder; ``cross_attention`` adds
    attention over an encoder output to every block."""

    def __init__(
        self, config: ModelConfig, num_layers: int, *, causal: bool, cross_attention: bool
    ) -> None:
        super().__init__()
        self.config, self.num_layers, self.causal = config, num_layers, causal
        distinct = 1 if config.share_layers else num_layers
        self.layers = nn.ModuleList(
            Block(config, cross_attention=cross_attention) for _ in range(distinct)
        )
        self.relative_bias = (
            RelativePositionBias(
                config.relative_buckets,
                config.relative_max_distance,
                config.num_heads,
                bidirectional=not causal,
            )
            if config.position == "relative"
            else None
        )
        self.rotary = (
            RotaryEmbedding(int(config.head_size * config.rotary_fraction), config.rotary_base)
            if config.position == "rotary"
            else None
        )
        self.final_norm = make_norm(config) if config.final_norm else None

    def layer(self, index: int) -> Block:
        return self.layers[0 if self.config.share_layers else index]

    def _self_masks(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None, past_len: int
    ) -> dict[str, AttentionMask]:
        length = x.shape[1]
        key_len = past_len + length
        bias = self.relative_bias(length, key_len, past_len) if self.relative_bias else None
        return {
            kind: build_mask(
                length,
                key_len,
                key_padding=padding_mask,
                past_len=past_len,
                causal=self.causal,
                window=self.config.local_window if kind == "local" else None,
                position_bias=bias,
                dtype=compute_dtype(x),  # the dtype attention scores will have
                device=x.device,
            )
            for kind in set(self.config.attention_pattern)
        }

    def forward(
        self,
        x: torch.Tensor,
        *,
        padding_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> StackOutput:
        """x: (B, L, H) embedded inputs. ``padding_mask``: (B, past + L), 1 = real token.
        ``position_ids``: (B, L) (:func:`~triform.nn.embeddings.make_position_ids`), needed
        by rotary stacks. ``use_cache`` starts a new cache when ``cache`` is None."""
        if use_cache and cache is None:
            cache = KVCache.empty(self.num_layers)
        past_len = cache.length if cache is not None else 0
        masks = self._self_masks(x, padding_mask, past_len)
        context_mask = None
        if context is not None:
            context_mask = build_mask(
                x.shape[1],
                context.shape[1],
                key_padding=context_padding_mask,
                dtype=compute_dtype(x),  # the dtype attention scores will have
                device=x.device,
            )
        rotary = None
        if self.rotary is not None:
            if position_ids is None:
                raise ValueError("a rotary stack needs position_ids")
            rotary = (self.rotary, *self.rotary.cos_sin(position_ids))
        hidden_states = [] if output_hidden_states else None
        attentions = [] if output_attentions else None
        cross_attentions = [] if output_attentions and context is not None else None
        for index in range(self.num_layers):
            if hidden_states is not None:
                hidden_states.append(x)
            x = self.layer(index)(
                x,
                masks[self.config.layer_attention(index)],
                context=context,
                context_mask=context_mask,
                rotary=rotary,
                cache=cache,
                layer=index,
                attentions=attentions,
                cross_attentions=cross_attentions,
            )
        if self.final_norm is not None:
            x = self.final_norm(x)
        if hidden_states is not None:
            hidden_states.append(x)
        return StackOutput(x, hidden_states, attentions, cross_attentions, cache)
