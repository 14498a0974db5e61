"""Position information: sinusoidal and learned tables, T5 relative bias, rotary."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The original Transformer's table: sin on even features, cos on odd. (P, D)"""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table.float()


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position encodings looked up by position id (no parameters)."""

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(num_positions, dim), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        return self.table[position_ids]


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucketing of ``key - query`` distances: exact for small, logarithmic for large."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_bucket = (
        max_exact
        + (
            torch.log(distance.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    log_bucket = torch.clamp(log_bucket, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, log_bucket)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to attention scores (T5)."""

    def __init__(self, num_buckets: int, max_distance: int, num_heads: int, bidirectional: bool):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, query_len: int, key_len: int, past_len: int = 0) -> torch.Tensor:
        """Bias for queries at positions ``past_len..`` over keys ``0..key_len``. (1, H, Lq, Lk)"""
        device = self.embedding.weight.device
        query_pos = torch.arange(past_len, past_len + query_len, device=device)[:, None]
        key_pos = torch.arange(key_len, device=device)[None, :]
        buckets = relative_position_bucket(
            key_pos - query_pos, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the first ``dim`` features of each head (rotate-half form)."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) positions -> cos, sin of shape (B, 1, L, dim)."""
        angles = position_ids[..., None].float() * self.inv_freq  # (B, L, dim/2)
        angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
        return angles.cos(), angles.sin()

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate (B, H, L, D) queries or keys; features past ``dim`` pass through."""
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        half = self.dim // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        out = rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
        return torch.cat([out, rest], dim=-1) if rest.numel() else out
