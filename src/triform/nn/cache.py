"""Key/value cache for incremental decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KV = tuple[torch.Tensor, torch.Tensor]  # each (B, heads, L, head_dim)


@dataclass
class KVCache:
    """Per-layer self-attention keys/values, grown one step at a time, and cross-attention
    keys/values, computed once from the encoder output and reused at every step."""

    self_kv: list[KV | None] = field(default_factory=list)
    cross_kv: list[KV | None] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        return cls([None] * num_layers, [None] * num_layers)

    @property
    def length(self) -> int:
        """Number of positions already cached."""
        first = self.self_kv[0] if self.self_kv else None
        return 0 if first is None else first[0].shape[2]

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> KV:
        """Add this step's keys/values of ``layer``; returns all of them so far."""
        past = self.self_kv[layer]
        if past is not None:
            keys = torch.cat([past[0], keys], dim=2)
            values = torch.cat([past[1], values], dim=2)
        self.self_kv[layer] = (keys, values)
        return keys, values

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Select batch rows in place (beam search keeps the surviving beams)."""
        for kvs in (self.self_kv, self.cross_kv):
            for i, kv in enumerate(kvs):
                if kv is not None:
                    kvs[i] = (
                        kv[0].index_select(0, batch_index),
                        kv[1].index_select(0, batch_index),
                    )
