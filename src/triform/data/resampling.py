"""Subword regularization in pretraining: every training window tokenized afresh.

``data.subword_sampling = {alpha = 0.1}`` (Unigram sampling, Kudo 2018) or
``{dropout = 0.1}`` (BPE-dropout, Provilkov et al. 2020) wraps a run's training reader: each
row of a batch is decoded back to its text (exact for byte-level BPE and characters), encoded
again with a sampled segmentation, framed with the special tokens the row had (``[CLS]`` /
``[SEP]``, ``<s>`` / ``</s>``) and cut or padded to the row's length (padding masked out).
The sampler is reseeded for every row from ``(seed, sample index)``, so a row is segmented
the same whichever way the global batch is split, and a resumed run sees the same
segmentations. Validation keeps the deterministic tokenization.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tokenizers
import torch

from triform.tensors import mix32
from triform.tokenizers.sampling import make_sampler

Batch = dict[str, torch.Tensor]


class ResampledReader:
    """``reader`` with each training row's text segmented afresh; see the module docstring.

    ``special_ids`` are the framing tokens kept in place at a row's ends; ``pad_id`` fills a
    row whose sampled ids come out shorter (with ``attention_mask`` 0 there).
    """

    def __init__(
        self,
        reader: Any,
        tokenizer: tokenizers.Tokenizer,
        spec: dict[str, Any],
        seed: int,
        special_ids: set[int],
        pad_id: int,
    ) -> None:
        self.reader, self.tokenizer = reader, tokenizer
        self.sampler = make_sampler(tokenizer, spec, seed)
        self.seed = seed
        self.special_ids, self.pad_id = special_ids, pad_id
        self.num_batches = reader.num_batches

    def __getattr__(self, name: str) -> Any:  # the wrapped reader's other attributes
        return getattr(self.reader, name)

    def _split(self, row: list[int]) -> tuple[list[int], list[int], list[int]]:
        """(leading special ids, content, trailing special ids) of one row."""
        start, end = 0, len(row)
        while start < end and row[start] in self.special_ids:
            start += 1
        while end > start and row[end - 1] in self.special_ids:
            end -= 1
        return row[:start], row[start:end], row[end:]

    def batch(self, step: int) -> Batch:
        """This rank's share of batch ``step``, segmented afresh."""
        return self.read(self.reader.samples(step))

    def read(self, samples: np.ndarray) -> Batch:
        """The rows of global sample indices ``samples``, segmented afresh."""
        batch = dict(self.reader.read(samples))
        ids = batch["input_ids"]  # (B, L)
        mask = batch.get("attention_mask")
        rows = [
            r[: int(m.sum())] if mask is not None else r
            for r, m in zip(ids.tolist(), mask if mask is not None else ids, strict=True)
        ]
        parts = [self._split(row) for row in rows]
        texts = [
            self.tokenizer.decode(content, skip_special_tokens=False) for _, content, _ in parts
        ]
        sampled = []
        for text, sample in zip(texts, batch["sample_index"].tolist(), strict=True):
            self.sampler.reseed(self._row_seed(sample))
            sampled += self.sampler.encode_batch([text], add_special_tokens=False)
        out = torch.full_like(ids, self.pad_id)
        new_mask = torch.zeros_like(ids)
        for b, ((lead, _, tail), content) in enumerate(zip(parts, sampled, strict=True)):
            keep = max(0, len(rows[b]) - len(lead) - len(tail))
            row = lead + content[:keep] + tail  # the sampled text, cut to the row's length
            out[b, : len(row)] = torch.tensor(row, dtype=ids.dtype)
            new_mask[b, : len(row)] = 1
        batch["input_ids"], batch["attention_mask"] = out, new_mask
        return batch

    def _row_seed(self, sample: int) -> int:
        """The sampler's seed for global sample ``sample``: a hash of (seed, sample)."""
        low = mix32(mix32(self.seed & 0xFFFFFFFF) ^ (sample & 0xFFFFFFFF))
        return mix32(low ^ (sample >> 32)) | (mix32(low ^ 0x5EED) << 32)
