"""What every triform model shares: its config, parameter counting and initialisation."""

from __future__ import annotations

import math

import torch
from torch import nn

from triform.config import ModelConfig

# Layers that write into the residual stream (scaled init, GPT-2).
_RESIDUAL_PROJECTIONS = ("self_attn.out.weight", "cross_attn.out.weight", "ffn.down.weight")


class TransformerModel(nn.Module):
    """Base class of :class:`EncoderModel`, :class:`DecoderModel` and
    :class:`EncoderDecoderModel`."""

    config: ModelConfig

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of distinct parameters (tied weights counted once).

        ``non_embedding=True`` leaves out token, segment and position tables, as scaling-law
        papers count; a vocabulary projection tied to the token table is left out with it.
        """
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            for module in self.modules():
                if isinstance(module, nn.Embedding) and _is_input_table(self, module):
                    params.pop(id(module.weight), None)
        return sum(p.numel() for p in params.values())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def init_weights(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; GPT-2's residual projections
        scaled by 1/sqrt(2 * layers) when ``scaled_residual_init`` is set."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and "relative_bias" not in name:
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.config.scaled_residual_init:
            residual_std = std / math.sqrt(2 * self.config.num_layers)
            for name, param in self.named_parameters():
                if name.endswith(
                    ("self_attn.out.weight", "cross_attn.out.weight", "ffn.down.weight")
                ):
                    nn.init.normal_(param, 0.0, residual_std)


def _is_input_table(model: nn.Module, embedding: nn.Embedding) -> bool:
    from triform.nn.positions import RelativePositionBias

    return not any(
        isinstance(m, RelativePositionBias) and m.embedding is embedding for m in model.modules()
    )
