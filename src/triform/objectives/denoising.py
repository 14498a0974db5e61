"""BART denoising: corrupt a document with switchable noise functions; the decoder
reconstructs the original.

Noise acts only on *content* tokens: real tokens (``attention_mask`` 1) that are not special
(``<s>``, ``</s>``, padding and ``special_ids`` stay where they are). In order:

1. ``sentence_permutation`` (fraction of sentences, 1.0 = all): that many randomly chosen
   sentences are shuffled among their own places. Sentences end at the tokens in
   ``sentence_end_ids`` (e.g. the ids of ".", "!", "?") or where the batch's optional
   ``sentence_ends`` (B, L) bool is True; the last sentence also ends with the content. Without
   any boundary a document is one sentence and permutation changes nothing.
2. ``text_infilling`` (fraction of tokens, BART: 0.3): exactly ``round(fraction * n)`` of a
   document's ``n`` content tokens are covered by non-overlapping spans whose lengths are drawn
   from Poisson(``poisson_lambda``); each span becomes one ``<mask>``, and a span of length 0
   inserts a ``<mask>``. All placements of the spans are equally likely.
3. ``token_masking`` (fraction): exactly ``round(fraction * n)`` content tokens not already
   infilled become ``<mask>``.
4. ``token_deletion`` (fraction): exactly ``round(fraction * n)`` content tokens not already
   infilled or masked are deleted.
5. ``document_rotation`` (probability per document): the corrupted content is rotated to begin
   at a uniformly chosen token (``<s>``/``</s>`` stay at the ends).

BART's published setting is infilling 0.3 with permutation of all sentences (the defaults).
Infilling spans are over tokens, not whole words.

Consumes ``input_ids`` (B, L) (framed ``<s> ... </s>`` or not), optionally ``attention_mask``
and ``sentence_ends``; produces ``input_ids`` (B, W) (the noised source, ``W = L`` unless an
insertion made a row longer), ``attention_mask`` (B, W), ``labels`` (B, L) (the original,
-100 on padding), ``decoder_input_ids`` (B, L) (labels shifted right after
``decoder_start_id``, BART: ``</s>``) and ``decoder_attention_mask`` (B, L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from triform.data.readers import DocumentSequences
from triform.errors import ConfigError
from triform.nn.losses import IGNORE_INDEX
from triform.objectives.base import (
    Objective,
    check_config,
    check_fraction,
    check_vocab_ids,
    require,
)
from triform.objectives.masked_lm import word_start_table
from triform.objectives.ops import (
    Batch,
    SampleDraws,
    choose,
    default_attention_mask,
    id_table,
    shift_right,
)

if TYPE_CHECKING:
    from triform.train.task import RunData

# The draws' streams (each a (B, width) table of uniforms keyed by sample and column).
PERMUTE_CHOICE, PERMUTE_ORDER = 0, 1  # which sentences move, and their new order
SPAN_LENGTHS, SPAN_PLACES = 2, 3  # infilling's Poisson lengths, and where the spans go
TOKEN_MASKING, TOKEN_DELETION = 4, 5
ROTATE, ROTATE_SHIFT = 6, 7  # whether a row is rotated, and by how much


@dataclass
class DenoisingConfig:
    """BART's noise switches (0 turns one off) and the ids they need."""

    vocab_size: int | None = None
    """Vocabulary size (default: from the tokenizer)."""
    mask_id: int | None = None
    """Id of the mask token (default: from the tokenizer)."""
    pad_id: int | None = None
    """Id of the padding token (default: from the tokenizer)."""
    eos_id: int | None = None
    """Id of the end-of-sequence token (default: from the tokenizer)."""
    special_ids: list[int] = field(default_factory=list)
    """Ids never noised, besides padding and eos (default: from the tokenizer)."""
    decoder_start_id: int | None = None
    """First decoder input; unset: ``eos_id``, as BART."""
    sentence_end_ids: list[int] = field(default_factory=list)
    """Ids that end a sentence, for permutation (default: from the tokenizer)."""
    text_infilling: float = 0.3
    """Share of the tokens covered by spans that each become one mask token (0: off)."""
    poisson_lambda: float = 3.0
    """Mean of the Poisson distribution of infilled span lengths."""
    sentence_permutation: float = 1.0
    """Share of the sentences shuffled among their places (0: off)."""
    token_masking: float = 0.0
    """Share of the tokens replaced by the mask token (0: off)."""
    token_deletion: float = 0.0
    """Share of the tokens deleted (0: off)."""
    document_rotation: float = 0.0
    """Probability that a document is rotated to start at a random token (0: off)."""

    def __post_init__(self) -> None:
        check_config(self)
        require(self, "vocab_size", "the size of the tokenizer's vocabulary")
        require(self, "pad_id", "the tokenizer's pad token")
        if self.vocab_size <= 0:
            raise ConfigError(f"objective.vocab_size must be positive, got {self.vocab_size}")
        check_fraction(
            self,
            "text_infilling",
            "sentence_permutation",
            "token_masking",
            "token_deletion",
            "document_rotation",
        )
        if self.poisson_lambda <= 0:
            raise ConfigError(
                f"objective.poisson_lambda must be positive, got {self.poisson_lambda}"
            )
        if self.text_infilling > 0 or self.token_masking > 0:
            require(self, "mask_id", "infilling and token masking insert the mask token")
        if self.decoder_start_id is None:
            self.decoder_start_id = self.eos_id
        require(self, "decoder_start_id", "BART starts the decoder with </s>; set eos_id")
        check_vocab_ids(
            self,
            self.vocab_size,
            "mask_id",
            "pad_id",
            "eos_id",
            "special_ids",
            "decoder_start_id",
            "sentence_end_ids",
        )


class _Layout:
    """Where a batch's content tokens are. ``index``: (B, L) content index of each content
    position; ``position``: (B, L + 1) absolute position of content index k, and for
    ``k = n`` the position right after the last content token; ``n``: (B,) counts."""

    def __init__(self, content: torch.Tensor) -> None:
        batch, length = content.shape
        arange = torch.arange(length, device=content.device)
        self.content = content
        self.n = content.sum(1)
        self.index = content.long().cumsum(1) - 1
        end = torch.where(content, arange, -1).max(1).values + 1  # (B,)
        position = end.unsqueeze(1).repeat(1, length + 2)
        position.scatter_(
            1, torch.where(content, self.index, length + 1), arange.expand_as(content)
        )
        self.position = position[:, : length + 1]


class Denoising(Objective):
    """BART denoising; see the module docstring."""

    name = "denoising"
    config_class = DenoisingConfig
    form = "encoder-decoder"

    def __init__(self, config: DenoisingConfig) -> None:
        super().__init__(config)
        self.is_special = id_table(
            config.vocab_size, [*config.special_ids, config.pad_id, config.eos_id, config.mask_id]
        )
        self.is_sentence_end = id_table(config.vocab_size, config.sentence_end_ids)

    def readers(self, data: RunData) -> tuple[DocumentSequences, DocumentSequences]:
        """Spans of one document each, framed ``<s> ... </s>``, cut where a word starts
        (when the vocabulary marks words)."""
        return data.shard_readers(
            DocumentSequences,
            data.run.data.seq_len,
            bos_id=data.special.bos_id,
            eos_id=data.special.eos_id,
            word_starts=word_start_table(data.tokenizer),
        )

    def __call__(self, batch: Batch, draws: SampleDraws) -> Batch:
        c = self.config
        ids = batch["input_ids"]  # (B, L)
        size, length = ids.shape
        device = ids.device
        attention = default_attention_mask(batch, c.pad_id).bool()
        content = attention & ~self.is_special.to(device)[ids]
        layout = _Layout(content)
        labels = ids.masked_fill(~attention, IGNORE_INDEX)

        if c.sentence_permutation > 0:
            ids = self.permute_sentences(ids, layout, batch.get("sentence_ends"), draws)
        value = ids.clone()  # what each position emits
        emit = attention.clone()  # whether it emits
        inserts = torch.zeros(size, length + 2, dtype=torch.long, device=device)  # masks before
        untouched = content.clone()
        if c.text_infilling > 0:
            self.infill(value, emit, inserts, untouched, layout, draws)
        noises = ((c.token_masking, TOKEN_MASKING), (c.token_deletion, TOKEN_DELETION))
        for fraction, stream in noises:
            if fraction > 0:
                count = torch.round(layout.n.double() * fraction).long()
                chosen = choose(untouched, count, draws.uniform(length, stream).to(device))
                if stream == TOKEN_DELETION:
                    emit &= ~chosen
                else:
                    value.masked_fill_(chosen, c.mask_id)
                untouched &= ~chosen
        source, body, source_len = self._emit(value, emit, inserts[:, : length + 1], content)
        if c.document_rotation > 0:
            source = self.rotate(source, body, draws)
        width = source.size(1)
        return {
            "input_ids": source,
            "attention_mask": (torch.arange(width, device=device) < source_len.unsqueeze(1)).long(),
            "labels": labels,
            "decoder_input_ids": shift_right(labels, c.decoder_start_id, c.pad_id),
            "decoder_attention_mask": attention.long(),
        }

    # -- noise functions ------------------------------------------------------------------
    def permute_sentences(
        self,
        ids: torch.Tensor,
        layout: _Layout,
        sentence_ends: torch.Tensor | None,
        draws: SampleDraws,
    ) -> torch.Tensor:
        """Shuffle a fraction of each row's sentences among their places. (B, L) -> (B, L)"""
        size, length = ids.shape
        device = ids.device
        content = layout.content
        ends = self.is_sentence_end.to(device)[ids]
        if sentence_ends is not None:
            ends = ends | sentence_ends.bool()
        ends = (ends & content).long()
        sentence = torch.where(content, ends.cumsum(1) - ends, length)  # (B, L) sentence id
        sizes = torch.zeros(size, length + 1, dtype=torch.long, device=device)
        sizes.scatter_add_(1, sentence, content.long())
        sizes = sizes[:, :length]  # (B, S): tokens per sentence, S = L slots
        count = (sizes > 0).sum(1)  # (B,) sentences (all non-empty, ids 0..count-1)
        slot = torch.arange(length, device=device).expand(size, length)
        shuffled = torch.ceil(count.double() * self.config.sentence_permutation).long()
        keys = draws.uniform(length, PERMUTE_CHOICE).to(device)
        chosen = choose(slot < count.unsqueeze(1), shuffled, keys)  # (B, S)
        places = torch.where(chosen, slot, length).sort(1).values  # chosen slots, ascending
        order = draws.uniform(length, PERMUTE_ORDER).to(device)
        movers = order.masked_fill(~chosen, 2.0).argsort(1)  # chosen sentences, random order
        # the j-th mover takes the j-th chosen place; every other sentence keeps its own
        target = torch.where(slot < shuffled.unsqueeze(1), places, movers)
        new_slot = torch.empty_like(slot).scatter_(1, movers, target)  # (B, S)
        in_order = new_slot.argsort(1)  # sentence at each slot
        slot_start = sizes.gather(1, in_order).cumsum(1) - sizes.gather(1, in_order)
        new_start = slot_start.gather(1, new_slot)  # (B, S) new first content index
        old_start = sizes.cumsum(1) - sizes
        sentence = sentence.clamp(max=length - 1)
        new_index = new_start.gather(1, sentence) + layout.index - old_start.gather(1, sentence)
        new_position = layout.position.gather(1, new_index.clamp(0, length))
        destination = torch.where(content, new_position, slot)
        return torch.empty_like(ids).scatter_(1, destination, ids)

    def infill(
        self,
        value: torch.Tensor,
        emit: torch.Tensor,
        inserts: torch.Tensor,
        untouched: torch.Tensor,
        layout: _Layout,
        draws: SampleDraws,
    ) -> None:
        """Text infilling, written into the emission plan (in place)."""
        c = self.config
        size, length = value.shape
        device = value.device
        lengths, kept = self.span_lengths(layout.n, length, draws)  # (B, K)
        spans = kept.sum(1)
        budget = lengths.sum(1)
        # place the spans: the n - budget other tokens fall into spans + 1 gaps (stars and
        # bars): choose where the `spans` bars go among the gaps + bars
        k_max = lengths.size(1)
        slots = torch.arange(length + k_max, device=device).expand(size, -1)
        bars = choose(
            slots < (layout.n - budget + spans).unsqueeze(1),
            spans,
            draws.uniform(length + k_max, SPAN_PLACES).to(device),
        )
        bar_at = torch.where(bars, slots, length + k_max).sort(1).values[:, :k_max]  # (B, K)
        j = torch.arange(k_max, device=device)
        start = bar_at - j + lengths.cumsum(1) - lengths  # (B, K) content index of each span
        start = torch.where(kept, start, length).clamp(max=length)
        dump = length + 1

        real = kept & (lengths > 0)
        first = layout.position.gather(1, start)  # (B, K) absolute position of span start
        span_first = torch.zeros(size, length + 2, dtype=torch.bool, device=device)
        span_first.scatter_(1, torch.where(real, first, dump), True)
        value.masked_fill_(span_first[:, :length], c.mask_id)  # a span becomes one mask
        inserts.scatter_add_(1, torch.where(kept & (lengths == 0), first, dump), kept.long())

        def covered(offset: int) -> torch.Tensor:  # content indices in [start + offset, end)
            diff = torch.zeros(size, length + 2, dtype=torch.long, device=device)
            ones = real.long()
            diff.scatter_add_(1, torch.where(real, start + offset, dump), ones)
            diff.scatter_add_(1, torch.where(real, start + lengths, dump), -ones)
            by_index = diff[:, :length].cumsum(1) > 0  # (B, L) over content indices
            return by_index.gather(1, layout.index.clamp(min=0)) & layout.content

        emit &= ~covered(1)  # every token of a span but its first is dropped
        untouched &= ~covered(0)

    def span_lengths(
        self, n: torch.Tensor, length: int, draws: SampleDraws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Poisson span lengths covering exactly ``round(text_infilling * n)`` tokens.

        Returns (lengths, kept), both (B, K): spans are drawn until their total reaches the
        budget, the last one trimmed to fit; ``kept`` marks the spans in use (length-0 spans
        among them are insertions).
        """
        c = self.config
        budget = torch.round(n.double() * c.text_infilling).long()  # (B,)
        k_max = math.ceil(2 * round(length * c.text_infilling) / c.poisson_lambda) + 8
        lengths = draws.poisson(k_max, SPAN_LENGTHS, c.poisson_lambda).to(n.device)
        lengths[:, -1] = length  # never run short: the last draw fills what is left
        before = lengths.cumsum(1) - lengths
        kept = before < budget.unsqueeze(1)
        lengths = torch.where(kept, torch.minimum(lengths, budget.unsqueeze(1) - before), 0)
        return lengths, kept

    def rotate(self, source: torch.Tensor, body: torch.Tensor, draws: SampleDraws) -> torch.Tensor:
        """Rotate each chosen row's body (content and masks) to start at a random token."""
        size, width = source.shape
        device = source.device
        rotated = draws.uniform(1, ROTATE)[:, 0].to(device) < self.config.document_rotation
        count = body.sum(1)  # (B,)
        shift = (draws.uniform(1, ROTATE_SHIFT)[:, 0].to(device) * count).long().clamp(min=0)
        shift = torch.where(rotated, shift, 0)
        layout = _Layout(body)
        rank = (layout.index - shift.unsqueeze(1)) % count.clamp(min=1).unsqueeze(1)
        destination = torch.where(
            body,
            layout.position.gather(1, rank.clamp(0, width)),
            torch.arange(width, device=device),
        )
        return torch.empty_like(source).scatter_(1, destination, source)

    def _emit(
        self, value: torch.Tensor, emit: torch.Tensor, inserts: torch.Tensor, content: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Carry out the plan: each position emits its inserted masks, then its token.

        Returns the source (B, W), which of its tokens are body (content or mask) and the
        row lengths (B,).
        """
        size, length = value.shape
        device = value.device
        count = emit.long() + inserts[:, :length]  # (B, L)
        total = count.sum(1) + inserts[:, length]  # (B,)
        width = max(length, int(total.max())) if size else length
        token_at = count.cumsum(1) - emit.long()  # (B, L) output position of each token
        inside = torch.arange(width + 1, device=device) < total.unsqueeze(1)
        source = torch.full((size, width + 1), self.config.pad_id, device=device, dtype=value.dtype)
        source.masked_fill_(inside, self.config.mask_id if self.config.mask_id is not None else 0)
        body = inside.clone()  # every gap left after placing the tokens is an inserted mask
        destination = torch.where(emit, token_at, width)
        source.scatter_(1, destination, value)
        body.scatter_(1, destination, content)
        return source[:, :width], body[:, :width], total
