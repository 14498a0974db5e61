"""Batch readers: turn a :class:`~triform.data.shards.ShardSet` into the batches each
objective needs, by vectorised numpy gathers straight from the memory map.

Every reader is a pure function of ``(seed, step, rank, world)``: ``reader.batch(step)``
returns the same batch whenever it is asked, so a run resumed at step ``k`` sees exactly the
data it would have seen. ``batch_size`` is the *global* batch: the rows of batch ``step`` are
fixed by ``(seed, step)`` alone, and a reader built with ``rank=r, world=w`` returns only its
contiguous share ``[r * B / w, (r + 1) * B / w)`` of them. The shares of all ranks are disjoint
and together are the batch one process reads, so the same config trains on the same data on
any number of processes.

Rows are numbered globally: row ``j`` of batch ``step`` is sample ``g = step * batch_size + j``
of the run's stream of samples, and every batch carries it as ``sample_index`` (B,) int64.
With micro-batch ``step * grad_accum + micro`` read at ``batch_size / grad_accum``, a sample
has the same index however the global batch is split into micro-batches and processes, so
objectives key their random draws by it (:class:`~triform.objectives.ops.SampleDraws`).
``reader.read(samples)`` reads any samples by index (an evaluation reads windows spread across
the split: :func:`evaluation_samples`); ``batch(step)`` is ``read(samples(step))``.

Readers that walk the data in windows or chunks go through it in epochs: epoch ``e`` is a
seeded permutation (``shuffle=False``: the natural order, for evaluation) and a batch that
crosses an epoch end takes its last rows from the next epoch.

Layouts (``B`` = this rank's rows, ``batch_size / world``; all tensors ``torch.int64``):

Every layout below also has ``sample_index`` (B,).

- :class:`CausalWindows`: ``{"input_ids": (B, seq_len + 1)}``: contiguous windows of the
  split's token stream, documents joined by ``separator_id`` (GPT-2: ``<|endoftext|>`` after
  every document); inputs are ``[:, :-1]``, targets ``[:, 1:]``.
- :class:`PackedSequences`: ``{"input_ids", "attention_mask": (B, seq_len)}``: the same stream
  cut in full-length sequences, each framed ``[prefix] content [suffix]`` (BERT:
  ``[CLS] ... [SEP]``; RoBERTa: ``<s> ... </s>``); the mask is all ones. ``example_ids``
  (B,) numbers the window, so static MLM masking gives a window the same mask every epoch
  (``sample_index`` differs each epoch: dynamic masking draws a new mask).
- :class:`DocumentSequences`: ``{"input_ids", "attention_mask": (B, seq_len)}``: chunks of
  single documents (never crossing a boundary), framed like packed sequences, then padded.
- :class:`SentencePairs`: ``{"input_ids", "token_type_ids", "attention_mask": (B, seq_len),
  "pair_labels": (B,)}`` as ``[CLS] A [SEP] B [SEP] pad...`` for NSP (label 0: B follows A,
  1: B from another document) or SOP (label 0: in order, 1: swapped); ``example_ids`` (B,)
  numbers the anchor sentence. Each row's random choices (its lengths, the swap or the other
  document) are a hash of (seed, sample index), so a row reads the same on any split.

A ``separator_id`` of ``"auto"`` is the tokenizer's eos id (else its sep id, else none).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from triform.data.shards import ShardSet
from triform.errors import ConfigError
from triform.tensors import hash_uniform
from triform.tokenizers import SpecialTokens

Auto = Literal["auto"]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` rows split over ``world`` processes
    (shares differ by at most one row when ``world`` does not divide ``n``)."""
    return slice(n * rank // world, n * (rank + 1) // world)


def check_rank(batch_size: int, rank: int, world: int) -> None:
    """Raise :class:`ConfigError` unless ``0 <= rank < world`` and ``world`` divides the
    global ``batch_size``."""
    _check_positive(world=world)
    if not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, {world}), got {rank}")
    if batch_size % world:
        raise ConfigError(
            f"a global batch of {batch_size} rows does not split over {world} processes"
        )


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def sample_uniform(seed: int, salt: int, stream: int, samples: np.ndarray) -> np.ndarray:
    """(B,) float64 uniform [0, 1) draws, one per sample of ``samples`` (B,): a hash of
    (seed, salt, stream, sample index), whichever rows share the batch."""
    index = torch.from_numpy(np.array(samples, dtype=np.int64))
    return hash_uniform(seed, torch.tensor(salt), torch.tensor(stream), index).double().numpy()


def _below(u: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Integers uniform in ``[0, n)`` from uniform [0, 1) draws ``u`` (n >= 1)."""
    return np.minimum((u * n).astype(np.int64), np.asarray(n) - 1)


def evaluation_samples(total: int, count: int | None = None) -> np.ndarray:
    """Which of a split's ``total`` items (windows, chunks, pairs) an evaluation reads:
    every one (``count`` None or at least ``total``), else ``count`` spread evenly across the
    split, item ``floor((k + 1/2) * total / count)`` for ``k < count`` (the middle of each of
    ``count`` equal parts). (count,) int64, ascending.

    The one rule of every evaluation (the pretraining's validation loss, a scaling sweep's
    loss, ``triform evaluate perplexity --windows``): deterministic, so every evaluation of a
    run reads the same items and its curve compares like with like, and spread over the
    whole split rather than its first items, whose text may not be like the rest (a split
    of several files, or of one whose halves differ). Spreading single items rather than
    whole batches samples the split most evenly (a stratified sample: one item from each
    part).
    """
    if count is None or count >= total:
        return np.arange(total, dtype=np.int64)
    if count < 1:
        raise ConfigError(f"an evaluation must read at least one item, got {count}")
    return ((2 * np.arange(count, dtype=np.int64) + 1) * total) // (2 * count)


def _frame(
    bos_id: int | None, eos_id: int | None, cls_id: int | None, sep_id: int | None
) -> tuple[list[int], list[int]]:
    """(prefix, suffix) token lists from the optional framing ids."""
    if cls_id is not None and bos_id is not None:
        raise ConfigError("give cls_id or bos_id as the sequence prefix, not both")
    if sep_id is not None and eos_id is not None:
        raise ConfigError("give sep_id or eos_id as the sequence suffix, not both")
    first = cls_id if cls_id is not None else bos_id
    last = sep_id if sep_id is not None else eos_id
    return ([] if first is None else [int(first)]), ([] if last is None else [int(last)])


class _EpochOrder:
    """Which item (window, chunk, anchor) each row of batch ``step`` reads: epoch ``e`` is a
    permutation of ``range(n)`` seeded by ``(seed, salt, e)`` (identity without shuffle)."""

    def __init__(self, n: int, batch_size: int, seed: int, salt: int, shuffle: bool) -> None:
        self.n, self.batch_size, self.seed, self.salt, self.shuffle = (
            n,
            batch_size,
            seed,
            salt,
            shuffle,
        )
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            perm = (
                _rng(self.seed, self.salt, epoch).permutation(self.n)
                if self.shuffle
                else np.arange(self.n)
            )
            self._perms[epoch] = perm
            while len(self._perms) > 2:
                self._perms.popitem(last=False)
        return self._perms[epoch]

    def samples(self, step: int, start: int = 0, count: int | None = None) -> np.ndarray:
        """(count,) int64 global sample indices of rows ``start .. start + count`` of batch
        ``step`` (default: the whole batch)."""
        if step < 0:
            raise ConfigError(f"step must be >= 0, got {step}")
        count = self.batch_size - start if count is None else count
        return step * self.batch_size + start + np.arange(count, dtype=np.int64)

    def rows(
        self, step: int, start: int = 0, count: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, epochs), each (count,) int64: rows ``start .. start + count`` of global
        batch ``step`` (default: the whole batch)."""
        return self.items(self.samples(step, start, count))

    def items(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(items, epochs) of global sample indices ``samples`` (B,): sample ``g`` is
        position ``g % n`` of epoch ``g // n``."""
        g = np.asarray(samples, dtype=np.int64)
        epochs, pos = np.divmod(g, self.n)
        items = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            items[sel] = self._perm(int(e))[pos[sel]]
        return items, epochs


def _indexed(samples: np.ndarray) -> dict[str, torch.Tensor]:
    """The ``sample_index`` (B,) int64 entry of a batch of ``samples``."""
    return {"sample_index": torch.from_numpy(np.array(samples, dtype=np.int64))}


class _Reader:
    """Shared parts: sizes, this rank's share, the epoch order, iteration over one epoch."""

    salt = 0  # distinguishes the random streams of different readers

    def __init__(
        self,
        shards: ShardSet,
        seq_len: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        _check_positive(seq_len=seq_len, batch_size=batch_size)
        check_rank(batch_size, rank, world)
        self.shards = shards
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)  # global: all ranks together
        self.rank, self.world = int(rank), int(world)
        self.share = rank_slice(self.batch_size, self.rank, self.world)
        self.rows_per_rank = self.batch_size // self.world
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.tokens = shards.tokens  # (N,) memmap

    def samples(self, step: int) -> np.ndarray:
        """(rows_per_rank,) int64: the global sample indices of this rank's share of batch
        ``step``."""
        return self.order.samples(step, self.share.start, self.rows_per_rank)

    def _order(self, n_items: int) -> _EpochOrder:
        return _EpochOrder(n_items, self.batch_size, self.seed, self.salt, self.shuffle)

    @property
    def num_batches(self) -> int:
        """Full batches in one epoch (at least 1)."""
        return max(1, self.items_per_epoch // self.batch_size)

    @property
    def items_per_epoch(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's share of batch ``step``."""
        return self.read(self.samples(step))

    def read(self, samples: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows of global sample indices ``samples`` (B,), with their ``sample_index``."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of epoch 0 in order (steps ``0 .. num_batches - 1``): with
        ``shuffle=False`` a fixed evaluation set."""
        for step in range(self.num_batches):
            yield self.batch(step)


class _Stream(_Reader):
    """The split seen as one stream: each document followed by ``separator_id`` (if any).
    Position ``p`` of the stream maps to the memmap by a vectorised search, so nothing is
    copied except the gathered batch."""

    def __init__(
        self,
        shards: ShardSet,
        seq_len: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        separator_id: int | None | Auto,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__(shards, seq_len, batch_size, seed, shuffle, rank, world)
        if separator_id == "auto":
            sp = shards.special
            separator_id = sp.eos_id if sp.eos_id is not None else sp.sep_id
        self.separator_id = None if separator_id is None else int(separator_id)
        n_docs = shards.n_docs
        if self.separator_id is None:
            self._sep_pos = None
            self.stream_len = shards.n_tokens
        else:
            # Stream position of the separator after document d: (n_docs,) int64.
            self._sep_pos = np.asarray(shards.doc_offsets[1:], dtype=np.int64) + np.arange(n_docs)
            self.stream_len = shards.n_tokens + n_docs

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Stream values at ``positions`` (any shape, int64) as int64 of the same shape."""
        if self._sep_pos is None:
            return self.tokens[positions].astype(np.int64)
        doc = np.searchsorted(self._sep_pos, positions, side="left")  # doc holding each pos
        doc = np.minimum(doc, len(self._sep_pos) - 1)
        is_sep = self._sep_pos[doc] == positions
        real = np.minimum(positions - doc, len(self.tokens) - 1)
        values = self.tokens[real].astype(np.int64)
        values[is_sep] = self.separator_id
        return values

    def _windows(self, width: int, stride: int) -> None:
        """Set up non-overlapping windows: ``n`` windows start ``stride`` apart and read
        ``width`` tokens; each epoch shifts them all by a seeded offset within the slack."""
        usable = self.stream_len - (width - stride)
        self.n_windows = usable // stride
        if self.n_windows < 1:
            raise ConfigError(
                f"the {self.shards.split} split has {self.stream_len} tokens, too few for "
                f"sequences of {width}; lower seq_len or add text"
            )
        self._width, self._stride = width, stride
        self._slack = usable - self.n_windows * stride
        self.order = self._order(self.n_windows)

    def _window_starts(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stream start of the window of each sample of ``samples`` and its index, (B,)."""
        items, epochs = self.order.items(samples)
        shift = np.zeros_like(items)
        if self.shuffle and self._slack:
            for e in np.unique(epochs).tolist():  # one or two epochs per batch
                shift[epochs == e] = _rng(self.seed, self.salt, e, 1).integers(0, self._slack + 1)
        return items * self._stride + shift, items

    @property
    def items_per_epoch(self) -> int:
        return self.n_windows


class CausalWindows(_Stream):
    """Contiguous windows for causal LM: ``{"input_ids": (B, seq_len + 1)}``.

    The split is one stream with ``separator_id`` after every document (``"auto"``: eos,
    e.g. GPT-2's ``<|endoftext|>``; ``None``: documents run together). An epoch reads every
    stream token once (windows overlap by the one token that is both the last target of a
    window and the first input of the next)."""

    salt = 1

    def __init__(
        self,
        shards: ShardSet,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        *,
        separator_id: int | None | Auto = "auto",
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__(shards, seq_len, batch_size, seed, shuffle, separator_id, rank, world)
        self._windows(width=self.seq_len + 1, stride=self.seq_len)

    @property
    def tokens_per_epoch(self) -> int:
        return self.n_windows * self.seq_len

    def read(self, samples: np.ndarray) -> dict[str, torch.Tensor]:
        starts, _ = self._window_starts(samples)
        pos = starts[:, None] + np.arange(self.seq_len + 1)  # (B, L+1)
        return {"input_ids": torch.from_numpy(self.gather(pos)), **_indexed(samples)}


class PackedSequences(_Stream):
    """Full-length packed sequences: ``{"input_ids", "attention_mask": (B, seq_len)}``.

    The stream (documents each followed by ``separator_id``) is cut in pieces of
    ``seq_len - len(framing)`` tokens; each is framed by ``cls_id``/``bos_id`` in front and
    ``sep_id``/``eos_id`` at the end (BERT: ``cls_id, sep_id``; RoBERTa: ``bos_id, eos_id``;
    T5 span corruption: no framing, ``separator_id`` = eos)."""

    salt = 2

    def __init__(
        self,
        shards: ShardSet,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        *,
        separator_id: int | None | Auto = "auto",
        bos_id: int | None = None,
        eos_id: int | None = None,
        cls_id: int | None = None,
        sep_id: int | None = None,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        word_starts: np.ndarray | None = None,
    ) -> None:
        super().__init__(shards, seq_len, batch_size, seed, shuffle, separator_id, rank, world)
        self.prefix, self.suffix = _frame(bos_id, eos_id, cls_id, sep_id)
        self.content_len = self.seq_len - len(self.prefix) - len(self.suffix)
        if self.content_len < 1:
            raise ConfigError(f"seq_len {seq_len} leaves no room for text after the framing")
        self._windows(width=self.content_len, stride=self.content_len)
        self.word_starts = None if word_starts is None else np.asarray(word_starts, dtype=bool)

    def _aligned(self, starts: np.ndarray) -> np.ndarray:
        """Each window start moved back to the nearest word start at most ``ALIGN_BACK``
        tokens before it (the window then repeats a few tokens of the one before), so that
        no window begins inside a word; a start with no word start in reach stays."""
        back = np.arange(ALIGN_BACK)  # (K,)
        pos = np.maximum(starts[:, None] - back, 0)  # (B, K)
        is_start = self.word_starts[np.minimum(self.gather(pos), len(self.word_starts) - 1)]
        found = is_start.any(axis=1)
        return np.where(found, starts - is_start.argmax(axis=1), starts)

    @property
    def tokens_per_epoch(self) -> int:
        return self.n_windows * self.content_len

    def read(self, samples: np.ndarray) -> dict[str, torch.Tensor]:
        starts, items = self._window_starts(samples)
        if self.word_starts is not None:
            starts = self._aligned(starts)
        pos = starts[:, None] + np.arange(self.content_len)  # (B, C)
        ids = np.empty((len(starts), self.seq_len), dtype=np.int64)
        p = len(self.prefix)
        ids[:, p : p + self.content_len] = self.gather(pos)
        if self.prefix:
            ids[:, 0] = self.prefix[0]
        if self.suffix:
            ids[:, -1] = self.suffix[0]
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.ones(len(starts), self.seq_len, dtype=torch.int64),
            "example_ids": torch.from_numpy(items.astype(np.int64)),  # static masking
            **_indexed(samples),
        }


ALIGN_BACK = 16  # how far back a window start may move to reach a word start


def _word_chunks(
    tokens: np.ndarray, offsets: np.ndarray, size: int, word_starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Document chunks of at most ``size`` tokens that end where a word starts: each chunk
    is cut at the last word start inside its ``size`` (or at ``size`` when a word is longer
    than a chunk), so that every chunk after a document's first begins a word. Returns
    (starts, lengths), each (n_chunks,)."""
    is_start = word_starts[np.minimum(tokens, len(word_starts) - 1)]  # (N,) bool
    cuts = np.flatnonzero(is_start)  # word-start positions, sorted
    starts, lengths = [], []
    for begin, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        pos = begin
        while pos < end:
            limit = pos + size
            if limit >= end:
                cut = end
            else:
                i = int(np.searchsorted(cuts, limit, side="right")) - 1
                cut = int(cuts[i]) if i >= 0 and cuts[i] > pos else limit
            starts.append(pos)
            lengths.append(cut - pos)
            pos = cut
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


class DocumentSequences(_Reader):
    """Sequences that never cross a document boundary: ``{"input_ids", "attention_mask":
    (B, seq_len)}``.

    Each document is cut in chunks of ``seq_len - len(framing)`` tokens (the last one
    shorter); each chunk is framed like :class:`PackedSequences` (the suffix right after the
    chunk's last token) and padded with ``pad_id`` (``"auto"``: the tokenizer's pad, else its
    eos, else 0). Chunks shorter than ``min_tokens`` are left out."""

    salt = 3

    def __init__(
        self,
        shards: ShardSet,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        cls_id: int | None = None,
        sep_id: int | None = None,
        pad_id: int | Auto = "auto",
        min_tokens: int = 1,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        word_starts: np.ndarray | None = None,
    ) -> None:
        super().__init__(shards, seq_len, batch_size, seed, shuffle, rank, world)
        _check_positive(min_tokens=min_tokens)
        self.prefix, self.suffix = _frame(bos_id, eos_id, cls_id, sep_id)
        self.content_len = self.seq_len - len(self.prefix) - len(self.suffix)
        if self.content_len < 1:
            raise ConfigError(f"seq_len {seq_len} leaves no room for text after the framing")
        if pad_id == "auto":
            sp = shards.special
            pad_id = next((i for i in (sp.pad_id, sp.eos_id) if i is not None), 0)
        self.pad_id = int(pad_id)
        # Chunk table, vectorised: chunk k of document d starts at offsets[d] + k * C.
        offsets = np.asarray(shards.doc_offsets, dtype=np.int64)
        lengths = np.diff(offsets)  # (n_docs,)
        c = self.content_len
        n_chunks = (lengths + c - 1) // c
        doc = np.repeat(np.arange(len(lengths)), n_chunks)
        k = np.arange(len(doc)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
        starts = offsets[doc] + k * c
        lens = np.minimum(c, offsets[doc + 1] - starts)
        if word_starts is not None:
            starts, lens = _word_chunks(self.tokens, offsets, c, np.asarray(word_starts, bool))
        keep = lens >= min_tokens
        self.chunk_starts, self.chunk_lens = starts[keep], lens[keep]  # (n_chunks,) each
        if len(self.chunk_starts) == 0:
            raise ConfigError(
                f"the {shards.split} split has no document chunk of >= {min_tokens} tokens"
            )
        self.order = self._order(len(self.chunk_starts))

    @property
    def items_per_epoch(self) -> int:
        return len(self.chunk_starts)

    @property
    def tokens_per_epoch(self) -> int:
        return int(self.chunk_lens.sum())

    def read(self, samples: np.ndarray) -> dict[str, torch.Tensor]:
        items, _ = self.order.items(samples)
        starts, lens = self.chunk_starts[items], self.chunk_lens[items]  # (B,)
        col = np.arange(self.content_len)
        valid = col[None, :] < lens[:, None]  # (B, C)
        pos = np.where(valid, starts[:, None] + col, 0)
        content = np.where(valid, self.tokens[pos], self.pad_id)
        rows = np.arange(len(items))
        ids = np.full((len(items), self.seq_len), self.pad_id, dtype=np.int64)
        p = len(self.prefix)
        ids[:, p : p + self.content_len] = content
        if self.prefix:
            ids[:, 0] = self.prefix[0]
        if self.suffix:
            ids[rows, p + lens] = self.suffix[0]
        length = p + lens + len(self.suffix)  # (B,)
        mask = np.arange(self.seq_len)[None, :] < length[:, None]
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            **_indexed(samples),
        }


class SentencePairs(_Reader):
    """Sentence-pair batches for next-sentence (``mode="nsp"``, BERT) or sentence-order
    (``mode="sop"``, ALBERT) prediction.

    Each row: ``[CLS] A [SEP] B [SEP]`` then ``pad_id``; ``token_type_ids`` 0 up to the first
    ``[SEP]``, 1 for ``B [SEP]``. A is whole sentences ending at an anchor sentence boundary
    inside a document (at most a random share of ``seq_len - 3`` tokens, the first sentence
    cut from the front if needed), B the sentences after it filling the rest (cut at the end).
    NSP: with probability 1/2 B starts at a random sentence of another document
    (``pair_labels`` 1), else it continues A (0), as HF ``next_sentence_label``. SOP: with
    probability 1/2 A and B are swapped (1), else in order (0), as HF
    ``sentence_order_label``. ``short_seq_prob``: BERT's share of shorter random targets.
    An epoch visits every anchor (sentence boundary inside a document) once.
    """

    salt = 4

    def __init__(
        self,
        shards: ShardSet,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        *,
        mode: Literal["nsp", "sop"] = "nsp",
        special: SpecialTokens | None = None,
        short_seq_prob: float = 0.0,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__(shards, seq_len, batch_size, seed, shuffle, rank, world)
        if mode not in ("nsp", "sop"):
            raise ConfigError(f"mode must be 'nsp' or 'sop', got {mode!r}")
        if self.seq_len < 5:
            raise ConfigError(f"seq_len must be >= 5 for sentence pairs, got {seq_len}")
        if not 0.0 <= short_seq_prob <= 1.0:
            raise ConfigError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
        special = special or shards.special
        missing = [n for n in ("cls_id", "sep_id") if getattr(special, n) is None]
        if missing:
            raise ConfigError(
                f"sentence pairs need {' and '.join(missing)}; this tokenizer has none "
                "(pass special=SpecialTokens(...))"
            )
        self.mode = mode
        self.special = special
        self.cls_id, self.sep_id = int(special.cls_id), int(special.sep_id)  # type: ignore[arg-type]
        self.pad_id = int(special.pad_id) if special.pad_id is not None else 0
        self.short_seq_prob = float(short_seq_prob)
        self.cs = np.asarray(shards.sent_offsets, dtype=np.int64)  # (S+1,) token offsets
        self.doc_sents = np.asarray(shards.doc_sent_offsets, dtype=np.int64)  # (D+1,)
        self.sent_doc = np.repeat(np.arange(shards.n_docs), np.diff(self.doc_sents))  # (S,)
        # Anchors: sentences j > first of their document (A ends before j, B starts at j).
        j = np.arange(1, shards.n_sents)
        self.anchors = j[self.sent_doc[j] == self.sent_doc[j - 1]]
        if len(self.anchors) == 0:
            raise ConfigError(
                f"the {shards.split} split has no document with two sentences (lines); "
                "sentence pairs need them"
            )
        if mode == "nsp" and shards.n_docs < 2:
            raise ConfigError(f"NSP needs at least two documents in the {shards.split} split")
        self.order = self._order(len(self.anchors))

    @property
    def items_per_epoch(self) -> int:
        return len(self.anchors)

    def _forward_span(self, start_sent: np.ndarray, budget: np.ndarray) -> tuple[np.ndarray, ...]:
        """Whole sentences from ``start_sent`` within its document up to ``budget`` tokens
        (at least one sentence, cut at the end): (token start, length)."""
        start = self.cs[start_sent]
        doc_end = self.doc_sents[self.sent_doc[start_sent] + 1]  # sentence index bound
        k = np.searchsorted(self.cs, start + budget, side="right") - 1
        k = np.clip(k, start_sent + 1, doc_end)
        return start, np.minimum(self.cs[k], start + budget) - start

    def read(self, samples: np.ndarray) -> dict[str, torch.Tensor]:
        # Each row's choices are hashes of (seed, its sample index): the same on any split.
        items, _ = self.order.items(samples)
        b = len(items)

        def uniform(stream: int) -> np.ndarray:  # (B,) in [0, 1)
            return sample_uniform(self.seed, self.salt, stream, samples)

        j = self.anchors[items]  # (B,) first sentence of the continuation
        doc = self.sent_doc[j]
        target = np.full(b, self.seq_len - 3, dtype=np.int64)
        if self.short_seq_prob > 0:
            short = uniform(0) < self.short_seq_prob
            target = np.where(short, _below(uniform(1), self.seq_len - 4) + 2, target)
        a_budget = _below(uniform(2), target - 1) + 1  # (B,) in [1, target - 1]
        # A: whole sentences ending at j, first sentence of the document at the earliest.
        a_end = self.cs[j]
        i = np.searchsorted(self.cs, a_end - a_budget, side="left")
        i = np.clip(i, self.doc_sents[doc], j - 1)
        a_start = np.maximum(self.cs[i], a_end - a_budget)
        a_len = a_end - a_start
        b_budget = target - a_len  # >= 1
        flip = uniform(3) < 0.5  # NSP: random B; SOP: swapped
        b_sent = j.copy()
        if self.mode == "nsp" and flip.any():
            b_sent[flip] = self._other_doc_sentences(doc[flip], np.asarray(samples)[flip])
        b_start, b_len = self._forward_span(b_sent, b_budget)
        if self.mode == "sop":
            s1 = np.where(flip, b_start, a_start)
            l1 = np.where(flip, b_len, a_len)
            s2 = np.where(flip, a_start, b_start)
            l2 = np.where(flip, a_len, b_len)
        else:
            s1, l1, s2, l2 = a_start, a_len, b_start, b_len
        batch = self._assemble(s1, l1, s2, l2, flip)
        batch["example_ids"] = torch.from_numpy(items.astype(np.int64))  # static masking
        return {**batch, **_indexed(samples)}

    def _other_doc_sentences(self, doc: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """A random sentence index from a document other than ``doc``, for each row (of
        global sample index ``samples``)."""
        n_sents = len(self.sent_doc)
        r = _below(sample_uniform(self.seed, self.salt, 4, samples), n_sents)
        for attempt in range(1, 17):  # redraw the few that hit their own document
            same = self.sent_doc[r] == doc
            if not same.any():
                return r
            u = sample_uniform(self.seed, self.salt, 4 + attempt, samples[same])
            r[same] = _below(u, n_sents)
        same = self.sent_doc[r] == doc
        r[same] = self.doc_sents[(doc[same] + 1) % (len(self.doc_sents) - 1)]
        return r

    def _assemble(
        self, s1: np.ndarray, l1: np.ndarray, s2: np.ndarray, l2: np.ndarray, labels: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """``[CLS] seg1 [SEP] seg2 [SEP] pad...`` from token spans, all (B,) int64."""
        pos = np.arange(self.seq_len)[None, :]  # (1, L)
        l1c, l2c = l1[:, None], l2[:, None]
        in1 = (pos >= 1) & (pos < 1 + l1c)  # (B, L)
        second_start = l1c + 2
        in2 = (pos >= second_start) & (pos < second_start + l2c)
        src = np.where(
            in1, s1[:, None] + pos - 1, np.where(in2, s2[:, None] + pos - second_start, 0)
        )
        ids = np.where(in1 | in2, self.tokens[src], self.pad_id).astype(np.int64)
        rows = np.arange(len(s1))
        ids[:, 0] = self.cls_id
        ids[rows, 1 + l1] = self.sep_id
        ids[rows, 2 + l1 + l2] = self.sep_id
        types = (pos >= second_start) & (pos <= second_start + l2c)  # B and its [SEP]
        mask = pos < (3 + l1 + l2)[:, None]
        return {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(types.astype(np.int64)),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "pair_labels": torch.from_numpy(labels.astype(np.int64)),
        }
