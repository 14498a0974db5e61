"""The vectorised building blocks objectives are made of: the two sources of randomness (a
``torch.Generator`` for dynamic draws, a counter-based hash for static ones) and small tensor
helpers (choosing positions, segmenting, compacting, shifting).

Shapes in comments: ``B`` batch, ``L`` sequence length, ``V`` vocabulary.
"""

from __future__ import annotations

import torch

from triform.nn.losses import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------------------
def uniform(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform [0, 1) floats drawn from ``generator`` (on its own device), moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x * constant mod 2**32`` for int64 ``x`` in [0, 2**32), without int64 overflow."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (the "lowbias32" hash): every input bit affects every
    output bit. Works on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_uniform(seed: int, *keys: torch.Tensor) -> torch.Tensor:
    """Deterministic uniform [0, 1) floats from a seed and integer key tensors (broadcast).

    A counter-based generator: the value at an element is a hash of (seed, its keys), so it
    does not depend on which other examples share the batch or on any generator state. Static
    masking uses keys (example id, position, stream).
    """
    h = _mix32(torch.tensor(seed & _MASK32))
    h = _mix32(h ^ ((seed >> 32) & _MASK32))
    for key in keys:  # (cheapest with the smallest keys first: the hash grows by broadcasting)
        key = key.to(torch.int64)
        h = _mix32(h ^ (key & _MASK32))
        if key.numel() and (key.min() < 0 or key.max() > _MASK32):
            h = _mix32(h ^ ((key >> 32) & _MASK32))
    return h.to(torch.float64).div(2.0**32).to(torch.float32).clamp(max=1.0 - 2.0**-24)


def choose(valid: torch.Tensor, count: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Exactly ``min(count[b], valid[b].sum())`` positions of each row, uniformly at random.

    valid: (B, N) bool; count: (B,) int; keys: (B, N) uniform floats. Returns (B, N) bool.
    The positions with the smallest keys among the valid ones are chosen (a random subset).
    """
    order = keys.masked_fill(~valid, 2.0).argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.size(1), device=order.device).expand_as(order))
    return valid & (ranks < count.unsqueeze(1))


def random_segmentation(
    num_items: torch.Tensor, num_segments: torch.Tensor, max_segments: int, keys: torch.Tensor
) -> torch.Tensor:
    """Split ``num_items[b]`` items into ``num_segments[b]`` non-empty segments at random.

    All such partitions are equally likely (``num_segments - 1`` cut points chosen among the
    ``num_items - 1`` gaps), as in T5's ``random_spans_noise_mask``.
    num_items, num_segments: (B,) with ``1 <= segments <= items`` (or both 0);
    keys: (B, N - 1) uniform floats with ``N >= max(num_items)``.
    Returns (B, max_segments) segment lengths, zero past ``num_segments[b]``.
    """
    batch, gaps = keys.shape
    slot = torch.arange(1, gaps + 1, device=keys.device)  # gap i sits before item i
    cuts = choose(slot < num_items.unsqueeze(1), (num_segments - 1).clamp(min=0), keys)  # (B, N-1)
    first = torch.zeros(batch, 1, dtype=torch.bool, device=keys.device)
    segment = torch.cat([first, cuts], dim=1).cumsum(1)  # (B, N) segment id of each item
    item_valid = torch.arange(gaps + 1, device=keys.device) < num_items.unsqueeze(1)
    lengths = torch.zeros(batch, max_segments + 1, dtype=torch.long, device=keys.device)
    lengths.scatter_add_(1, segment.clamp(max=max_segments), item_valid.long())
    return lengths[:, :max_segments]


# ---------------------------------------------------------------------------------------
# Tensor helpers
# ---------------------------------------------------------------------------------------
def id_table(vocab_size: int, ids: list[int | None]) -> torch.Tensor:
    """A (V,) bool lookup table, True at ``ids``: ``table[input_ids]`` tests membership."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    table[[i for i in ids if i is not None]] = True
    return table


def compact(values: torch.Tensor, keep: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """Move each row's kept values to the front, in order; fill the rest. (B, N) -> (B, width)

    Kept values beyond ``width`` are dropped.
    """
    batch = values.size(0)
    position = keep.long().cumsum(1) - 1
    index = torch.where(keep & (position < width), position, width)
    out = values.new_full((batch, width + 1), fill)
    out.scatter_(1, index, values)  # dropped values all land in the spare last column
    return out[:, :width]


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs from labels: ``start_id`` then ``labels[:, :-1]``, ignored ones as pad.

    (B, T) -> (B, T)
    """
    start = labels.new_full((labels.size(0), 1), start_id)
    shifted = torch.cat([start, labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


def default_attention_mask(batch: Batch, pad_id: int | None) -> torch.Tensor:
    """``batch["attention_mask"]``, else ``input_ids != pad_id``, else all ones. (B, L)"""
    if "attention_mask" in batch:
        return batch["attention_mask"]
    ids = batch["input_ids"]
    if pad_id is not None:
        return (ids != pad_id).long()
    return torch.ones_like(ids)
