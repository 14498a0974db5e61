"""Normalisation layers: LayerNorm (BERT, GPT, BART) and RMSNorm (T5)."""

from __future__ import annotations

from torch import nn

from triform.config import ModelConfig


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    """The norm the config asks for, over ``dim`` features (default: hidden size)."""
    dim = dim if dim is not None else config.hidden_size
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps)
