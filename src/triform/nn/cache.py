"""Key/value cache for incremental decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KV = tuple[torch.Tensor, torch.Tensor]  # each (B, heads, L, head_dim)


@dataclass
class KVCache:
    """Per-layer self-attention keys/values, grown one step at a time, and cross-attention
    keys/values, computed once from the encoder output and reused at every step.

    With a ``capacity`` (the most positions it will hold, e.g. prompt + new tokens) each
    layer's keys and values live in one buffer (B, heads, capacity, head_dim) allocated at
    the first append and written in place; a step returns views of its filled part. Without
    one, every step concatenates (no bound needed, a copy of the whole cache per step).
    """

    self_kv: list[KV | None] = field(default_factory=list)
    cross_kv: list[KV | None] = field(default_factory=list)
    capacity: int | None = None
    # preallocated buffers per layer, and how many positions of each are filled
    _buffers: list[KV | None] = field(default_factory=list, repr=False)
    _filled: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def empty(cls, num_layers: int, capacity: int | None = None) -> KVCache:
        """A cache for ``num_layers`` layers; ``capacity``: see the class docstring."""
        if capacity is not None and capacity <= 0:
            raise ValueError(f"KVCache capacity must be positive, got {capacity}")
        return cls(
            [None] * num_layers,
            [None] * num_layers,
            capacity,
            [None] * num_layers,
            [0] * num_layers,
        )

    @property
    def length(self) -> int:
        """Number of positions already cached."""
        first = self.self_kv[0] if self.self_kv else None
        return 0 if first is None else first[0].shape[2]

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> KV:
        """Add this step's keys/values (B, heads, L, D) of ``layer``; returns all of them so
        far (B, heads, past + L, D)."""
        if self.capacity is None:
            past = self.self_kv[layer]
            if past is not None:
                keys = torch.cat([past[0], keys], dim=2)
                values = torch.cat([past[1], values], dim=2)
            self.self_kv[layer] = (keys, values)
            return keys, values
        start, stop = self._filled[layer], self._filled[layer] + keys.shape[2]
        if stop > self.capacity:
            raise ValueError(f"KVCache holds {self.capacity} positions; {stop} were asked for")
        buffers = self._buffers[layer]
        if buffers is None:
            batch, heads, _, dim = keys.shape
            shape = (batch, heads, self.capacity, dim)
            buffers = (keys.new_empty(shape), values.new_empty(shape))
            self._buffers[layer] = buffers
        buffers[0][:, :, start:stop] = keys
        buffers[1][:, :, start:stop] = values
        self._filled[layer] = stop
        kv = (buffers[0][:, :, :stop], buffers[1][:, :, :stop])
        self.self_kv[layer] = kv
        return kv

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Select batch rows (beam search keeps the surviving beams): preallocated buffers
        are rewritten in place when the number of rows stays the same."""
        for i, buffers in enumerate(self._buffers):
            if buffers is None:
                continue
            filled = self._filled[i]
            if batch_index.numel() == buffers[0].shape[0]:
                for buffer in buffers:
                    buffer[:, :, :filled] = buffer[:, :, :filled].index_select(0, batch_index)
            else:
                buffers = tuple(b.index_select(0, batch_index) for b in buffers)
                self._buffers[i] = buffers
            self.self_kv[i] = (buffers[0][:, :, :filled], buffers[1][:, :, :filled])
        kinds = (self.cross_kv,) if self.capacity is not None else (self.self_kv, self.cross_kv)
        for kvs in kinds:
            for i, kv in enumerate(kvs):
                if kv is not None:
                    kvs[i] = (
                        kv[0].index_select(0, batch_index),
                        kv[1].index_select(0, batch_index),
                    )
