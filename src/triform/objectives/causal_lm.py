"""Causal language modelling (GPT, GPT-2, GPT-3): predict every next token.

Documents are packed into one stream with a separator (``<|endoftext|>``) after each, and the
stream is cut into windows of ``L + 1`` tokens that overlap by one token, so that every token
of the stream is a target exactly once (:func:`pack_documents`). A window gives the inputs
``window[:-1]`` and the targets ``window[1:]``; attention runs across document boundaries, as
in GPT-2 and GPT-3 (the separator tells the model a new document starts).

Consumes ``input_ids`` (B, L + 1) and optionally ``attention_mask`` (B, L + 1) (0 marks
padding in a final short window); produces ``input_ids`` (B, L), ``attention_mask`` (B, L)
and ``labels`` (B, L) with -100 where the target is padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from triform.data.readers import CausalWindows
from triform.nn.losses import IGNORE_INDEX
from triform.objectives.base import Objective, check_config
from triform.objectives.ops import Batch, SampleDraws

if TYPE_CHECKING:
    from triform.train.task import RunData


@dataclass
class CausalLMConfig:
    """The causal LM has no options: the shift is the whole objective."""

    def __post_init__(self) -> None:
        check_config(self)


def pack_documents(
    documents: Sequence[torch.Tensor], separator_id: int, seq_len: int, drop_last: bool = True
) -> torch.Tensor:
    """Pack token-id documents into windows for :class:`CausalLM`. -> (N, seq_len + 1)

    Each document is followed by ``separator_id``; window ``i`` is
    ``stream[i * seq_len : i * seq_len + seq_len + 1]``. With ``drop_last=False`` the final
    partial window is padded with the separator (give the reader's attention mask to the
    objective to keep it out of the loss).
    """
    if not documents:
        return torch.empty((0, seq_len + 1), dtype=torch.long)
    lengths = torch.tensor([len(d) for d in documents], dtype=torch.long)  # (D,)
    flat = torch.cat([torch.as_tensor(d, dtype=torch.long).view(-1) for d in documents])
    total = flat.numel() + len(documents)
    stream = torch.full((total,), separator_id, dtype=torch.long)
    document = torch.repeat_interleave(torch.arange(len(documents)), lengths)  # (T,)
    stream[torch.arange(flat.numel()) + document] = flat  # each token moves past the
    # separators of the documents before it
    targets = total - 1
    windows = targets // seq_len if drop_last else -(-targets // seq_len)
    if windows == 0:
        return torch.empty((0, seq_len + 1), dtype=torch.long)
    needed = windows * seq_len + 1
    if total < needed:
        stream = torch.cat([stream, stream.new_full((needed - total,), separator_id)])
    return stream[:needed].unfold(0, seq_len + 1, seq_len)  # (N, seq_len + 1)


class CausalLM(Objective):
    """Inputs and targets shifted by one; see the module docstring."""

    name = "causal-lm"
    resamplable = True
    config_class = CausalLMConfig
    form = "decoder"
    generative = True

    def readers(self, data: RunData) -> tuple[CausalWindows, CausalWindows]:
        return data.shard_readers(CausalWindows, data.run.data.seq_len)

    def __call__(self, batch: Batch, draws: SampleDraws | None = None) -> Batch:
        """Inputs and targets shifted by one (nothing is drawn)."""
        window = batch["input_ids"]  # (B, L + 1)
        labels = window[:, 1:]
        mask = batch.get("attention_mask")
        if mask is None:
            attention_mask = torch.ones_like(window[:, :-1])
        else:
            attention_mask = mask[:, :-1]
            labels = labels.masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        return {"input_ids": window[:, :-1], "attention_mask": attention_mask, "labels": labels}

    def source_length(self, seq_len: int) -> int:
        return seq_len + 1
