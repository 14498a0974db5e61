"""The vectorised building blocks objectives are made of: their randomness (counter-based
draws keyed by each row's global sample index, :class:`SampleDraws`; static masking hashes a
fixed seed with :func:`triform.tensors.hash_uniform`) and small tensor helpers (choosing
positions, segmenting, compacting, shifting).

Shapes in comments: ``B`` batch, ``L`` sequence length, ``V`` vocabulary.
"""

from __future__ import annotations

import math

import torch

from triform.errors import TriformError
from triform.nn.losses import IGNORE_INDEX
from triform.tensors import MASK32, mix32

Batch = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------------------
class SampleDraws:
    """The random draws of one batch: uniform [0, 1) floats, each a hash of (``seed``,
    ``split``, the row's global sample index, a column, a stream).

    Row ``b`` of the batch is global sample ``samples[b]`` (a reader's ``sample_index``: the
    sample's place in the run's stream of samples, the same whichever way a global batch is
    split into micro-batches and processes). Every element depends on its (seed, sample,
    column, stream) alone, never on which rows share the batch or on the batch's width, so a
    sample is masked, corrupted and sampled the same on 1 process, N micro-batches or N
    processes, and again in a resumed run; a sample seen again in a later epoch has a new
    index, hence new draws (dynamic masking). ``stream`` tells apart the draws an objective
    makes for different purposes (each objective numbers its own); ``split`` tells apart the
    training and the validation stream, which number their samples from 0 each.

    Dropout is not drawn here: it comes from the global RNG, seeded per (step, rank) (a
    per-sample dropout mask would rule out fused attention).
    """

    TRAIN, VALIDATION = 0, 1

    def __init__(self, seed: int, samples: torch.Tensor | int, split: int = TRAIN) -> None:
        """``samples``: the rows' global sample indices (B,), or a count ``B`` for samples
        ``0 .. B - 1`` (a batch of its own, e.g. outside a run)."""
        if isinstance(samples, int):
            samples = torch.arange(samples)
        samples = torch.as_tensor(samples).to(torch.int64).view(-1)  # (B,)
        key = mix32(mix32(mix32(seed & MASK32) ^ ((seed >> 32) & MASK32)) ^ split)
        self.seed, self.split, self.samples = seed, split, samples
        # the row keys, (B,): both 32-bit halves of the (non-negative) sample index
        self._rows = mix32(mix32(key ^ (samples & MASK32)) ^ (samples >> 32))

    @classmethod
    def of(cls, batch: Batch, seed: int, split: int = TRAIN) -> SampleDraws:
        """The draws of a reader's or an objective's ``batch`` (its ``sample_index`` (B,))."""
        if "sample_index" not in batch:
            raise TriformError(
                "the batch has no sample_index (B,): the global index of each row, which "
                "every reader gives and the objective's random draws are keyed by"
            )
        return cls(seed, batch["sample_index"], split)

    def __len__(self) -> int:
        return self.samples.numel()

    @property
    def device(self) -> torch.device:
        return self.samples.device

    def to(self, device: torch.device | str) -> SampleDraws:
        """The same draws, computed on ``device``."""
        return SampleDraws(self.seed, self.samples.to(device), self.split)

    def rows(self, index: torch.Tensor | slice) -> SampleDraws:
        """The draws of some rows of the batch (e.g. one micro-batch's)."""
        return SampleDraws(self.seed, self.samples[index], self.split)

    def _stream(self, stream: int) -> torch.Tensor:
        return mix32(self._rows ^ mix32(stream & MASK32))  # (B,)

    @staticmethod
    def _unit(h: torch.Tensor) -> torch.Tensor:
        """Hashes in [0, 2**32) to floats in [0, 1): their top 24 bits, exactly."""
        return (h >> 8).to(torch.float32) * 2.0**-24

    def uniform(self, width: int, stream: int) -> torch.Tensor:
        """(B, width) uniform [0, 1) floats: row ``b``, column ``j`` keyed by
        (``samples[b]``, ``j``, ``stream``). A wider call extends a narrower one."""
        column = torch.arange(width, device=self.device)
        return self._unit(mix32(self._stream(stream).unsqueeze(1) ^ column))

    def at(self, rows: torch.Tensor, columns: torch.Tensor, stream: int) -> torch.Tensor:
        """(N,) floats at the (``rows[n]``, ``columns[n]``) entries: the same values as
        ``uniform(width, stream)[rows, columns]``, without the whole (B, width) table."""
        h = self._stream(stream)[rows.to(self.device)] ^ columns.to(self.device, torch.int64)
        return self._unit(mix32(h))

    def poisson(self, width: int, stream: int, rate: float) -> torch.Tensor:
        """(B, width) int64 Poisson(``rate``) counts, by inverting the CDF of
        :meth:`uniform` draws."""
        return poisson_quantile(self.uniform(width, stream), rate)


def poisson_quantile(u: torch.Tensor, rate: float) -> torch.Tensor:
    """Poisson(``rate``) counts from uniform [0, 1) draws ``u`` (any shape): the smallest
    ``k`` with ``P(X <= k) > u``. int64, same shape as ``u``."""
    top = int(rate + 12.0 * math.sqrt(rate) + 12.0)  # P(X > top) is far below 2**-24
    k = torch.arange(top + 1, dtype=torch.float64)
    cdf = (k * math.log(rate) - rate - torch.lgamma(k + 1.0)).exp().cumsum(0)
    counts = torch.searchsorted(cdf.to(u.device), u.double().contiguous(), right=True)
    return counts.clamp(max=top)


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
