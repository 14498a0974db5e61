"""The one Transformer core every family is built from."""

from triform.nn.attention import Attention
from triform.nn.blocks import Block
from triform.nn.cache import KVCache
from triform.nn.embeddings import Embeddings, make_position_ids
from triform.nn.feedforward import FeedForward
from triform.nn.linear import Linear
from triform.nn.masks import AttentionMask, build_mask
from triform.nn.norms import make_norm
from triform.nn.positions import (
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalPositions,
    relative_position_bucket,
)
from triform.nn.stack import Stack

__all__ = [
    "Attention",
    "AttentionMask",
    "Block",
    "Embeddings",
    "FeedForward",
    "KVCache",
    "Linear",
    "RelativePositionBias",
    "RotaryEmbedding",
    "SinusoidalPositions",
    "Stack",
    "build_mask",
    "make_norm",
    "make_position_ids",
    "relative_position_bucket",
]
