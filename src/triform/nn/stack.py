"""A stack of blocks with everything they share: masks built once per forward pass,
T5's relative position bias, rotary tables, cross-layer sharing (ALBERT) and the final norm."""

from __future__ import annotations

import torch
from torch import nn

from triform.config import ModelConfig
from triform.nn.blocks import Block
from triform.nn.cache import KVCache
from triform.nn.masks import AttentionMask, build_mask
from triform.nn.norms import make_norm
from triform.nn.positions import RelativePositionBias, RotaryEmbedding


def mask_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention scores will have: the autocast dtype when autocast is on."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


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
                dtype=mask_dtype(x),
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
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """x: (B, L, H) embedded inputs. ``padding_mask``: (B, past + L), 1 = real token.
        Returns the final hidden states (B, L, H) and, if asked, the input of every layer
        followed by the final output."""
        past_len = cache.length if cache is not None else 0
        masks = self._self_masks(x, padding_mask, past_len)
        context_mask = None
        if context is not None:
            context_mask = build_mask(
                x.shape[1],
                context.shape[1],
                key_padding=context_padding_mask,
                dtype=mask_dtype(x),
                device=x.device,
            )
        rotary = None
        if self.rotary is not None:
            if position_ids is None:
                steps = torch.arange(past_len, past_len + x.shape[1], device=x.device)
                position_ids = steps.unsqueeze(0).expand(x.shape[0], -1)
            rotary = (self.rotary, *self.rotary.cos_sin(position_ids))
        hidden_states = [] if output_hidden_states else None
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
            )
        if self.final_norm is not None:
            x = self.final_norm(x)
        if hidden_states is not None:
            hidden_states.append(x)
        return x, hidden_states
