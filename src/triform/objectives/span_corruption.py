"""T5 span corruption: drop random spans of the input, each replaced by one sentinel; the
target lists the sentinels followed by the spans they replaced, then ``</s>``.

For a sequence of ``n`` tokens, exactly ``round(n * noise_density)`` tokens are noise
(clamped to ``[1, n - 1]``), split into ``round(noise / mean_span_length)`` spans (at least
one). Noise and non-noise spans alternate, starting with non-noise; every way of splitting the
counts into non-empty spans is equally likely (T5's ``random_spans_noise_mask``). So::

    tokens  x0 x1 x2 x3 x4 x5 x6 x7         (noise: x2 x3, x6)
    input   x0 x1 <extra_id_0> x4 x5 <extra_id_1> </s>
    target  <extra_id_0> x2 x3 <extra_id_1> x6 </s>

Input length ``n - noise + spans + 1`` and target length ``noise + spans + 1`` follow from
``n``; :func:`t5_span_lengths` inverts them (T5's ``random_spans_helper``): a reader that
supplies windows of ``t5_span_lengths(L)[0]`` packed tokens gets inputs of exactly ``L``
tokens and targets of exactly ``t5_span_lengths(L)[1]``, with no padding.

Consumes ``input_ids`` (B, N) and optionally ``attention_mask`` (B, N) (a row's real tokens
must come first); produces ``input_ids`` (B, I), ``attention_mask`` (B, I), ``labels``
(B, T) (-100 on padding), ``decoder_input_ids`` (B, T) (labels shifted right after
``decoder_start_id``; T5 starts with the pad id) and ``decoder_attention_mask`` (B, T).
``I`` and ``T`` are the lengths for ``n = N``; shorter rows are padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from triform.data.readers import PackedSequences
from triform.errors import ConfigError, TriformError
from triform.nn.losses import IGNORE_INDEX
from triform.objectives.base import Objective, check_config, require
from triform.objectives.masked_lm import word_start_table
from triform.objectives.ops import (
    Batch,
    SampleDraws,
    compact,
    random_segmentation,
    shift_right,
)

if TYPE_CHECKING:
    from triform.train.task import RunData


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a sequence of ``length`` tokens, as T5 counts them."""
    if length < 2:
        return 0, 0
    noise = min(max(round(length * noise_density), 1), length - 1)
    return noise, max(round(noise / mean_span_length), 1)


def _span_counts_tensor(
    length: torch.Tensor, noise_density: float, mean_span_length: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`span_counts` for a (B,) tensor of lengths (float64, same rounding)."""
    noise = torch.round(length.double() * noise_density).long()
    noise = torch.minimum(noise.clamp(min=1), length - 1)
    spans = torch.round(noise.double() / mean_span_length).long().clamp(min=1)
    short = length < 2
    return noise.masked_fill(short, 0), spans.masked_fill(short, 0)


def corrupted_lengths(
    length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> tuple[int, int]:
    """(input length, target length) after corrupting ``length`` tokens (both with ``</s>``)."""
    noise, spans = span_counts(length, noise_density, mean_span_length)
    return length - noise + spans + 1, noise + spans + 1


def t5_span_lengths(
    input_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> tuple[int, int]:
    """(raw tokens needed, target length) so that corrupted inputs are exactly
    ``input_length`` long: the largest raw length whose input fits, as T5's
    ``random_spans_helper`` computes it. (T5 also shortens both by one when
    ``noise_density == 0.5`` to keep targets no longer than inputs; this does not.)"""
    if input_length < 3:
        raise ConfigError(
            f"span corruption needs an input length of at least 3, got {input_length}"
        )
    raw = input_length - 1
    while corrupted_lengths(raw + 1, noise_density, mean_span_length)[0] <= input_length:
        raw += 1
    return raw, corrupted_lengths(raw, noise_density, mean_span_length)[1]


@dataclass
class SpanCorruptionConfig:
    """T5's settings; ``sentinel_ids[i]`` is the id of ``<extra_id_i>``."""

    sentinel_ids: list[int] = field(default_factory=list)
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... (default: from the tokenizer)."""
    eos_id: int | None = None
    """Id of the end-of-sequence token (default: from the tokenizer)."""
    pad_id: int | None = None
    """Id of the padding token (default: from the tokenizer)."""
    decoder_start_id: int | None = None
    """First decoder input; unset: ``pad_id``, as T5."""
    noise_density: float = 0.15
    """Share of the tokens corrupted."""
    mean_span_length: float = 3.0
    """Mean length of a corrupted span, in tokens."""

    def __post_init__(self) -> None:
        check_config(self)
        require(self, "eos_id", "the tokenizer's </s>")
        require(self, "pad_id", "the tokenizer's pad token")
        if not self.sentinel_ids:
            raise ConfigError(
                "objective.sentinel_ids is required (<extra_id_0>, <extra_id_1>, ...)"
            )
        if not 0.0 < self.noise_density < 1.0:
            raise ConfigError(
                f"objective.noise_density must be in (0, 1), got {self.noise_density}"
            )
        if self.mean_span_length < 1.0:
            raise ConfigError(
                f"objective.mean_span_length must be at least 1, got {self.mean_span_length}"
            )
        if self.decoder_start_id is None:
            self.decoder_start_id = self.pad_id


class SpanCorruption(Objective):
    """T5 span corruption; see the module docstring."""

    name = "span-corruption"
    resamplable = True
    config_class = SpanCorruptionConfig
    form = "encoder-decoder"

    def __init__(self, config: SpanCorruptionConfig) -> None:
        super().__init__(config)
        self.sentinels = torch.tensor(config.sentinel_ids, dtype=torch.long)

    def readers(self, data: RunData) -> tuple[PackedSequences, PackedSequences]:
        """Packed windows long enough that the corrupted input is ``data.seq_len`` long, each
        beginning at a word start (when the vocabulary marks words)."""
        return data.shard_readers(
            PackedSequences,
            self.source_length(data.run.data.seq_len),
            word_starts=word_start_table(data.tokenizer),
        )

    def source_length(self, seq_len: int) -> int:
        return t5_span_lengths(seq_len, self.config.noise_density, self.config.mean_span_length)[0]

    def target_length(self, seq_len: int) -> int:
        return t5_span_lengths(seq_len, self.config.noise_density, self.config.mean_span_length)[1]

    def noise_mask(self, lengths: torch.Tensor, width: int, draws: SampleDraws) -> torch.Tensor:
        """(B, width) bool: T5's random spans for rows of ``lengths`` (B,) real tokens; the
        cut points of the noise and of the other spans from ``draws`` streams 0 and 1 (one
        draw per gap between tokens)."""
        c = self.config
        batch, device = lengths.size(0), lengths.device
        noise, spans = _span_counts_tensor(lengths, c.noise_density, c.mean_span_length)
        max_spans = span_counts(width, c.noise_density, c.mean_span_length)[1]
        gaps = max(width - 1, 0)
        noise_keys, other_keys = (draws.uniform(gaps, s).to(device) for s in (0, 1))
        noise_len = random_segmentation(noise, spans, max_spans, noise_keys)  # (B, S)
        other_len = random_segmentation(lengths - noise, spans, max_spans, other_keys)  # (B, S)
        # spans alternate non-noise, noise, non-noise, ...: mark where each one starts
        interleaved = torch.stack([other_len, noise_len], dim=2).view(batch, 2 * max_spans)
        starts = interleaved.cumsum(1)[:, :-1]  # (B, 2S - 1)
        indicator = torch.zeros(batch, width + 1, dtype=torch.long, device=device)
        indicator.scatter_add_(1, starts, torch.ones_like(starts))
        span_number = indicator[:, :width].cumsum(1)  # (B, width)
        real = torch.arange(width, device=device) < lengths.unsqueeze(1)
        return (span_number % 2 == 1) & real & (spans > 0).unsqueeze(1)

    def __call__(self, batch: Batch, draws: SampleDraws) -> Batch:
        c = self.config
        ids = batch["input_ids"]  # (B, N)
        size, width = ids.shape
        if "attention_mask" in batch:
            lengths = batch["attention_mask"].sum(1)
        else:
            lengths = torch.full((size,), width, dtype=torch.long, device=ids.device)
        in_width, target_width = corrupted_lengths(width, c.noise_density, c.mean_span_length)
        max_spans = span_counts(width, c.noise_density, c.mean_span_length)[1]
        if max_spans > len(c.sentinel_ids):
            raise TriformError(
                f"span corruption of {width} tokens makes up to {max_spans} spans but only "
                f"{len(c.sentinel_ids)} sentinel ids were given"
            )
        noise = self.noise_mask(lengths, width, draws)  # (B, N)
        real = torch.arange(width, device=ids.device) < lengths.unsqueeze(1)
        previous = torch.nn.functional.pad(noise[:, :-1], (1, 0), value=False)
        noise_start = noise & ~previous
        first = torch.arange(width, device=ids.device) == 0
        has_spans = noise.any(1, keepdim=True)  # rows of fewer than 2 tokens have none
        other_start = real & ~noise & (previous | first) & has_spans
        # span k of either kind gets sentinel k: the k-th noise span and the non-noise span
        # before it (in the target, that non-noise span's place is taken by the sentinel)
        span_index = (
            (noise_start | other_start).long().cumsum(1).sub(1).div(2, rounding_mode="floor")
        )
        sentinel = self.sentinels.to(ids.device)[span_index.clamp(0, len(c.sentinel_ids) - 1)]

        eos = torch.full((size, 1), c.eos_id, dtype=ids.dtype, device=ids.device)
        always = torch.ones(size, 1, dtype=torch.bool, device=ids.device)

        def build(replace: torch.Tensor, keep: torch.Tensor, out_width: int, fill: int):
            # </s> goes in an extra last column, so it follows the row's last kept token
            values = torch.cat([torch.where(replace, sentinel, ids), eos], dim=1)
            keep = torch.cat([keep, always], dim=1)
            return compact(values, keep, out_width, fill), keep.sum(1)

        inputs, in_len = build(noise_start, real & (~noise | noise_start), in_width, c.pad_id)
        labels, _ = build(other_start, real & (noise | other_start), target_width, IGNORE_INDEX)
        in_mask = torch.arange(in_width, device=ids.device) < in_len.unsqueeze(1)
        return {
            "input_ids": inputs,
            "attention_mask": in_mask.long(),
            "labels": labels,
            "decoder_input_ids": shift_right(labels, c.decoder_start_id, c.pad_id),
            "decoder_attention_mask": (labels != IGNORE_INDEX).long(),
        }
