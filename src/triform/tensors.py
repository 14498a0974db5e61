"""Small tensor helpers shared by inference and the commands."""

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
