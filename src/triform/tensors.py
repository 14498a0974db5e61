"""Small tensor helpers shared by the data readers, objectives, inference and the commands."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_rows(
    rows: Sequence[Sequence[int]],
    value: int = 0,
    *,
    left: bool = False,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad rows of ids into one tensor: ``(ids, mask)``, each (N, W) long, ``mask`` 1 on the
    real entries. Rows go on the right (``left=True``: on the left, for decoders that continue
    them). ``W`` is the longest row, at least ``width`` when given, and at least 1."""
    longest = max([len(r) for r in rows] + [width or 0, 1])
    ids = torch.full((len(rows), longest), value, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        if not len(row):
            continue
        span = slice(longest - len(row), longest) if left else slice(0, len(row))
        ids[i, span] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------
# Counter-based random numbers: a value is a hash of its keys, never a generator's state
# ---------------------------------------------------------------------------------------
MASK32 = 0xFFFFFFFF


def _mul32(x, constant: int):
    """``x * constant mod 2**32`` for int64 ``x`` in [0, 2**32), without int64 overflow."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def mix32(x):
    """A 32-bit integer finaliser (the "lowbias32" hash): every input bit affects every
    output bit. Works on Python ints and on int64 tensors holding values in [0, 2**32)."""
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
    h = mix32(torch.tensor(seed & MASK32))
    h = mix32(h ^ ((seed >> 32) & MASK32))
    for key in keys:  # (cheapest with the smallest keys first: the hash grows by broadcasting)
        key = key.to(torch.int64)
        h = mix32(h ^ (key & MASK32))
        if key.numel() and (key.min() < 0 or key.max() > MASK32):
            h = mix32(h ^ ((key >> 32) & MASK32))
    return h.to(torch.float64).div(2.0**32).to(torch.float32).clamp(max=1.0 - 2.0**-24)
