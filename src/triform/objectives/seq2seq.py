"""Sequence to sequence on parallel text (the original Transformer): a TSV of
``source<TAB>target`` lines, tokenized once, batched by length, trained with label smoothing.

- :func:`read_pairs` reads the TSV; :class:`ParallelCorpus` tokenizes it with a HuggingFace
  ``tokenizers.Tokenizer`` (its post-processor frames the sequences, e.g. ``<s> x </s>``) and
  stores the ids flat; :meth:`ParallelCorpus.batches` yields padded batches of similar lengths.
- :class:`Seq2Seq` turns such a batch into model inputs: decoder inputs are the targets
  shifted right after ``decoder_start_id``; labels are the targets with -100 on padding.
- :func:`label_smoothed_cross_entropy` is the loss (epsilon 0.1, as in Vaswani et al.).

Label smoothing, two definitions. ``"uniform"`` (the default) mixes the one-hot target with a
uniform distribution over all V classes: the target gets ``1 - eps + eps / V``, every other
class ``eps / V``. This is ``torch.nn.functional.cross_entropy(label_smoothing=eps)``, the
original Tensor2Tensor and HuggingFace's. ``"fairseq"`` is fairseq's
``label_smoothed_nll_loss`` (since 2020): the target gets ``1 - eps`` and the other classes
share ``eps`` equally, ``eps / (V - 1)`` each. The two differ by O(eps / V).

Batch keys: :class:`Seq2Seq` consumes ``input_ids`` (B, S), ``attention_mask`` (B, S),
``target_ids`` (B, T) and optionally ``target_mask`` (B, T) (else ``target_ids != pad_id``);
it produces ``input_ids``, ``attention_mask``, ``decoder_input_ids``, ``decoder_attention_mask``
and ``labels``, all ready for ``EncoderDecoderModel``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from triform.data.readers import check_rank, rank_slice
from triform.errors import ConfigError, TriformError
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share
from triform.objectives.base import Objective, check_config, check_fraction, require
from triform.objectives.ops import Batch, SampleDraws, shift_right
from triform.runtime.distributed import rank, world_size

if TYPE_CHECKING:
    from triform.train.task import RunData


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read ``source<TAB>target`` lines (UTF-8); blank lines are skipped. A missing file or a
    line without exactly one tab is a :class:`TriformError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TriformError(f"parallel text not found: {path}")
    pairs = []
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            for number, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) != 2:
                    raise TriformError(
                        f"{path}:{number}: expected source<TAB>target, found {len(fields)} "
                        "tab-separated fields"
                    )
                pairs.append((fields[0], fields[1]))
    except UnicodeDecodeError as err:
        raise TriformError(f"{path}: not UTF-8 text ({err.reason})") from None
    if not pairs:
        raise TriformError(f"{path}: no source<TAB>target pairs")
    return pairs


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
    reduction: Literal["mean", "sum", "none"] = "mean",
    kind: Literal["uniform", "fairseq"] = "uniform",
) -> torch.Tensor:
    """Cross entropy against a smoothed target (see the module docstring for ``kind``).

    logits: (..., V); labels: (...). ``"mean"`` averages over the labels that are not
    ``ignore_index`` (zero when none is); ``"none"`` returns per-position losses (zero where
    ignored).
    """
    vocab = logits.size(-1)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    counted = labels != ignore_index
    nll = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = -log_probs.sum(-1)  # sum over all classes
    if kind == "uniform":
        loss = (1.0 - epsilon) * nll + (epsilon / vocab) * total
    elif kind == "fairseq":
        other = epsilon / (vocab - 1)
        loss = (1.0 - epsilon - other) * nll + other * total
    else:
        raise ValueError(f"unknown label smoothing kind {kind!r}")
    loss = loss * counted
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / counted.sum().clamp(min=1)


@dataclass
class Seq2SeqConfig:
    """Ids, length limits and label smoothing of a sequence-to-sequence run."""

    pad_id: int | None = None
    """Id of the padding token (default: from the tokenizer)."""
    eos_id: int | None = None
    """Id of the end-of-sequence token (default: from the tokenizer)."""
    decoder_start_id: int | None = None
    """First decoder input; unset: ``eos_id`` (fairseq's Transformer)."""
    label_smoothing: float = 0.1
    """Label smoothing epsilon (0: none)."""
    smoothing: Literal["uniform", "fairseq"] = "uniform"
    """Spread epsilon over all classes (torch, HuggingFace) or over the others (fairseq)."""
    max_source_length: int | None = None
    """Source tokens kept (the end token stays); unset: all."""
    max_target_length: int | None = None
    """Target tokens kept (the end token stays); unset: all."""

    def __post_init__(self) -> None:
        check_config(self)
        require(self, "pad_id", "the tokenizer's pad token")
        if self.decoder_start_id is None:
            self.decoder_start_id = self.eos_id
        require(self, "decoder_start_id", "the decoder's first input; set it or eos_id")
        check_fraction(self, "label_smoothing", upper_inclusive=False)
        for name in ("max_source_length", "max_target_length"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ConfigError(f"objective.{name} must be at least 2, got {value}")


class Seq2Seq(Objective):
    """Parallel text to encoder-decoder inputs; see the module docstring."""

    name = "seq2seq"
    config_class = Seq2SeqConfig
    form = "encoder-decoder"
    perplexity_of = "nll_loss"  # the unsmoothed loss: perplexity of the label-smoothed one lies

    @classmethod
    def check_run(cls, run: Any) -> None:
        super().check_run(run)
        if run.data.sources is None:
            raise ConfigError("objective seq2seq reads data.sources (a TSV of source<TAB>target)")

    def readers(self, data: RunData) -> tuple[PairBatches, PairBatches]:
        """Length-bucketed batches of the ``data.sources`` pairs; the last
        ``data.val_fraction`` of the pairs (at least one) are the validation set."""
        run = data.run
        pairs = read_pairs(run.data.sources)
        held_out = max(1, int(len(pairs) * run.data.val_fraction))
        if len(pairs) - held_out < 1:
            raise TriformError(f"{run.data.sources}: too few pairs to split ({len(pairs)})")
        c, seq_len = self.config, run.data.seq_len
        limits = (c.max_source_length or seq_len, c.max_target_length or seq_len)
        pad_id = data.special.pad_id if data.special.pad_id is not None else 0
        return tuple(
            PairBatches(
                ParallelCorpus.from_pairs(split, data.tokenizer, *limits),
                data.micro_batch,
                run.train.seed,
                pad_id,
                shuffle,
                rank=rank(),
                world=world_size(),
            )
            for split, shuffle in ((pairs[:-held_out], True), (pairs[-held_out:], False))
        )

    def __call__(self, batch: Batch, draws: SampleDraws | None = None) -> Batch:
        """Decoder inputs and labels from the targets (nothing is drawn)."""
        c = self.config
        targets = batch["target_ids"]  # (B, T)
        target_mask = batch.get("target_mask")
        if target_mask is None:
            target_mask = (targets != c.pad_id).long()
        labels = targets.masked_fill(target_mask == 0, IGNORE_INDEX)
        source = batch["input_ids"]  # (B, S)
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            attention_mask = (source != c.pad_id).long()
        return {
            "input_ids": source,
            "attention_mask": attention_mask,
            "decoder_input_ids": shift_right(labels, c.decoder_start_id, c.pad_id),
            "decoder_attention_mask": target_mask,
            "labels": labels,
        }

    loss_at_labels = True  # padded targets are never projected onto the vocabulary

    def loss(
        self, output: Any, batch: Batch, totals: Counts | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Label-smoothed cross entropy; ``parts["nll_loss"]`` is the plain one (perplexity).
        Logits (..., V) and labels (...) at every target position or at the labelled ones."""
        logits, labels = output.logits, batch["labels"]
        loss = label_smoothed_cross_entropy(
            logits, labels, self.config.label_smoothing, kind=self.config.smoothing
        )
        with torch.no_grad():
            nll = label_smoothed_cross_entropy(logits, labels, 0.0)
        return loss_share(loss, "tokens", {"tokens": labelled(labels)}, totals), {"nll_loss": nll}

    def corpus(self, path: str | Path, tokenizer: Any) -> ParallelCorpus:
        """The TSV at ``path`` tokenized with this objective's length limits."""
        return ParallelCorpus.from_pairs(
            read_pairs(path),
            tokenizer,
            self.config.max_source_length,
            self.config.max_target_length,
        )


def _truncate(encoding: Any, limit: int | None) -> list[int]:
    """The ids of a ``tokenizers.Encoding``, cut to ``limit`` keeping a final special token."""
    ids = encoding.ids
    if limit is None or len(ids) <= limit:
        return ids
    if encoding.special_tokens_mask[-1]:
        return ids[: limit - 1] + ids[-1:]
    return ids[:limit]


def _flatten(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat ids (N,), offsets (n + 1,)) of a list of id lists."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    offsets = torch.zeros(len(sequences) + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    flat = torch.tensor([i for s in sequences for i in s], dtype=torch.long)
    return flat, offsets


def _gather_padded(
    flat: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a flat store, right-padded: (ids (B, W), mask (B, W))."""
    start, length = offsets[rows], offsets[rows + 1] - offsets[rows]  # (B,)
    width = int(length.max()) if rows.numel() else 0
    column = torch.arange(width)
    mask = column < length.unsqueeze(1)  # (B, W)
    index = (start.unsqueeze(1) + column).clamp(max=max(flat.numel() - 1, 0))
    ids = (
        torch.where(mask, flat[index], pad_id)
        if flat.numel()
        else index.new_full(mask.shape, pad_id)
    )
    return ids, mask.long()


class ParallelCorpus:
    """Tokenized source/target pairs, stored flat; batches padded to their longest row."""

    def __init__(self, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> None:
        if len(sources) != len(targets):
            raise TriformError(f"{len(sources)} sources but {len(targets)} targets")
        self.source_ids, self.source_offsets = _flatten(sources)
        self.target_ids, self.target_offsets = _flatten(targets)

    @classmethod
    def from_pairs(
        cls,
        pairs: Sequence[tuple[str, str]],
        tokenizer: Any,
        max_source_length: int | None = None,
        max_target_length: int | None = None,
    ) -> ParallelCorpus:
        """Tokenize ``(source, target)`` strings with a ``tokenizers.Tokenizer``."""
        sources = tokenizer.encode_batch([s for s, _ in pairs])
        targets = tokenizer.encode_batch([t for _, t in pairs])
        return cls(
            [_truncate(e, max_source_length) for e in sources],
            [_truncate(e, max_target_length) for e in targets],
        )

    def __len__(self) -> int:
        return self.source_offsets.numel() - 1

    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(source lengths (n,), target lengths (n,))."""
        return self.source_offsets.diff(), self.target_offsets.diff()

    def collate(self, rows: torch.Tensor, pad_id: int) -> Batch:
        """The batch of pairs ``rows`` (B,): ``input_ids``, ``attention_mask`` (B, S),
        ``target_ids``, ``target_mask`` (B, T), right-padded with ``pad_id``."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        source, source_mask = _gather_padded(self.source_ids, self.source_offsets, rows, pad_id)
        target, target_mask = _gather_padded(self.target_ids, self.target_offsets, rows, pad_id)
        return {
            "input_ids": source,
            "attention_mask": source_mask,
            "target_ids": target,
            "target_mask": target_mask,
        }

    def batch_rows(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        bucket_batches: int = 50,
        drop_last: bool = False,
    ) -> list[torch.Tensor]:
        """Row indices of each batch of one epoch, batched by length.

        Rows are shuffled (with ``generator``; in order without one), cut into buckets of
        ``bucket_batches`` batches, sorted by length inside each bucket and cut into batches;
        the batches are then shuffled. Similar lengths share a batch, so little is padding.
        """
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        count = len(self)
        order = torch.randperm(count, generator=generator) if generator else torch.arange(count)
        source_len, target_len = self.lengths()
        size = torch.maximum(source_len, target_len)
        batches = []
        bucket = batch_size * max(1, bucket_batches)
        for begin in range(0, count, bucket):
            rows = order[begin : begin + bucket]
            rows = rows[size[rows].argsort(stable=True)]
            batches.extend(rows.split(batch_size))
        if drop_last and batches and batches[-1].numel() < batch_size:
            batches.pop()
        if generator is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def batches(
        self,
        batch_size: int,
        pad_id: int,
        generator: torch.Generator | None = None,
        bucket_batches: int = 50,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Padded batches of one epoch (see :meth:`batch_rows`)."""
        for rows in self.batch_rows(batch_size, generator, bucket_batches, drop_last):
            yield self.collate(rows, pad_id)


class PairBatches:
    """Length-bucketed batches of a :class:`ParallelCorpus`, a pure function of (seed, step,
    rank, world): the reader of :class:`Seq2Seq` runs. Rank ``rank`` collates its contiguous
    share of each global batch; training drops each epoch's short last batch, so every rank
    always has rows. Row ``j`` of an epoch's rows (its batches one after the other) is global
    sample ``epoch * items_per_epoch + j`` (``sample_index``); :meth:`read` reads any."""

    def __init__(
        self,
        corpus: ParallelCorpus,
        batch_size: int,
        seed: int,
        pad_id: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        check_rank(batch_size, rank, world)
        self.corpus, self.batch_size, self.seed, self.shuffle = corpus, batch_size, seed, shuffle
        self.pad_id, self.rank, self.world = pad_id, rank, world
        self._epoch: int = -1
        self._batches: list[torch.Tensor] = []
        self._starts = torch.zeros(1, dtype=torch.long)  # first sample of each batch
        self._kept: list[int] = []  # the batches with a row for every rank
        self._epoch_batches(0)
        self.items_per_epoch = int(self._starts[-1])
        self.num_batches = len(self._kept)
        if self.num_batches == 0:
            raise TriformError(
                f"{len(corpus)} pairs are fewer than one batch of {batch_size}; "
                "lower train.batch_size"
            )

    def _epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._batches = self.corpus.batch_rows(
                self.batch_size, generator if self.shuffle else None, drop_last=self.shuffle
            )
            sizes = torch.tensor([0] + [len(r) for r in self._batches])
            self._starts = sizes.cumsum(0)
            # (only a validation split's short last batch may lack a row for some rank)
            self._kept = [i for i, r in enumerate(self._batches) if len(r) >= self.world]
            self._epoch = epoch
        return self._batches

    def batch(self, step: int) -> Batch:
        epoch, number = divmod(step, self.num_batches)
        batches = self._epoch_batches(epoch)
        number = self._kept[number]
        share = rank_slice(len(batches[number]), self.rank, self.world)
        start = epoch * self.items_per_epoch + int(self._starts[number])
        samples = torch.arange(start + share.start, start + share.stop)
        return self._collate(batches[number][share], samples)

    def read(self, samples: Any) -> Batch:
        """The pairs of global sample indices ``samples`` (B,) (see the class docstring)."""
        samples = torch.as_tensor(samples, dtype=torch.long).view(-1)
        epochs = samples.div(self.items_per_epoch, rounding_mode="floor")
        place = samples - epochs * self.items_per_epoch
        rows = torch.empty_like(samples)
        for epoch in epochs.unique().tolist():
            chosen = epochs == epoch
            flat = torch.cat(self._epoch_batches(epoch))
            rows[chosen] = flat[place[chosen]]
        return self._collate(rows, samples)

    def _collate(self, rows: torch.Tensor, samples: torch.Tensor) -> Batch:
        batch = self.corpus.collate(rows, self.pad_id)
        batch["sample_index"] = samples.to(torch.long)
        return batch
