"""Token losses shared by pretraining, fine-tuning and evaluation.

``IGNORE_INDEX`` marks labels that do not count, as in ``torch.nn.functional.cross_entropy``
and HuggingFace.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over the labels that are not ``IGNORE_INDEX``.

    logits: (..., V); labels: (...). Zero (not NaN) when no label counts; no host sync.
    """
    labels = labels.reshape(-1)
    total = F.cross_entropy(
        logits.reshape(labels.numel(), -1).float(),
        labels,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
