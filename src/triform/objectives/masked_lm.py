"""Masked language modelling (BERT, RoBERTa): select ~15% of the tokens, replace 80% of those
with ``[MASK]``, 10% with a random token and leave 10% unchanged; predict the originals.

- Special tokens (``special_ids``, ``pad_id``, ``mask_id``) and padding (``attention_mask`` 0)
  are never selected.
- ``selection="bernoulli"`` selects each token (or word) independently with ``mask_prob``
  (HuggingFace's collator); ``"exact"`` selects exactly ``round(mask_prob * n)`` of a
  sequence's ``n`` candidate tokens (Google's BERT, fairseq's RoBERTa) - with whole words,
  that many on average (within one word of it).
- ``masking="dynamic"`` (RoBERTa) draws a new mask every time a sequence is seen, from the
  draws passed to the call (keyed by the run seed and the row's global sample index, which
  is new at every epoch; streams 0-3 at each position). ``"static"`` (BERT) masks each
  example the same way every
  epoch: the draws are a hash of ``static_seed``, the example's id and the position, so the
  batch must carry ``example_ids`` (B,) - a stable index of each example in the data set (to
  emulate BERT's ``dupe_factor`` copies, give each copy its own id).
- ``whole_word=True`` selects words rather than pieces: all pieces of a word are selected
  together (the 80/10/10 choice is then made per piece, as Google's BERT does). Word starts come
  from a batch key ``word_start`` (B, L) bool, or from an ``is_continuation`` (V,) table of
  the ids that continue a word, read from the tokenizer's word markers (WordPiece ``##``,
  byte-level BPE ``Ġ``, SentencePiece ``▁``; see :func:`continuation_table`).
- Random replacements are drawn uniformly from the non-special ids of the vocabulary
  (HuggingFace draws from the whole vocabulary, special tokens included).

Consumes ``input_ids`` (B, L) and optionally ``attention_mask``, ``token_type_ids``,
``word_start``, ``example_ids``; produces ``input_ids`` (masked), ``attention_mask``,
``labels`` (the original id where selected, -100 elsewhere) and ``token_type_ids`` if given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from triform.config import ModelConfig
from triform.data.readers import PackedSequences
from triform.errors import ConfigError, TriformError
from triform.nn.losses import IGNORE_INDEX
from triform.objectives.base import (
    Draw,
    Objective,
    check_config,
    check_fraction,
    check_vocab_ids,
    make_config,
    require,
)
from triform.objectives.ops import Batch, SampleDraws, choose, default_attention_mask, id_table
from triform.tensors import hash_uniform

if TYPE_CHECKING:
    from triform.train.task import RunData


@dataclass
class MaskedLMConfig:
    """MLM settings; ids usually come from the tokenizer (see ``context_from_tokenizer``)."""

    vocab_size: int | None = None
    """Vocabulary size, the range of random replacements (default: from the tokenizer)."""
    mask_id: int | None = None
    """Id of the mask token (default: from the tokenizer)."""
    pad_id: int | None = None
    """Id of the padding token (default: from the tokenizer)."""
    special_ids: list[int] = field(default_factory=list)
    """Ids never selected for prediction (default: from the tokenizer)."""
    mask_prob: float = 0.15
    """Share of the tokens selected for prediction."""
    mask_token_prob: float = 0.8
    """Of the selected tokens, the share replaced by the mask token."""
    random_token_prob: float = 0.1
    """Of the selected tokens, the share replaced by a random token (the rest stay)."""
    selection: Literal["bernoulli", "exact"] = "bernoulli"
    """Select each token independently, or exactly ``round(mask_prob * n)`` per sequence."""
    masking: Literal["dynamic", "static"] = "dynamic"
    """A new mask every time a sequence is seen (RoBERTa), or the same every epoch (BERT)."""
    static_seed: int = 0
    """Seed of static masking."""
    whole_word: bool = False
    """Select whole words: all pieces of a word together."""

    def __post_init__(self) -> None:
        check_config(self)
        require(self, "vocab_size", "the size of the tokenizer's vocabulary")
        if self.vocab_size <= 0:
            raise ConfigError(f"objective.vocab_size must be positive, got {self.vocab_size}")
        check_fraction(self, "mask_prob", "mask_token_prob", "random_token_prob")
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-9:
            raise ConfigError(
                "objective.random_token_prob: mask_token_prob + random_token_prob must be <= 1, "
                f"got {self.mask_token_prob} + {self.random_token_prob}"
            )
        check_vocab_ids(self, self.vocab_size, "mask_id", "pad_id", "special_ids")


# Word markers of subword vocabularies: WordPiece marks the pieces that continue a word;
# byte-level BPE (GPT-2, RoBERTa) and SentencePiece (T5, ALBERT) mark the pieces that start one.
CONTINUATION_MARKERS = ("##",)
START_MARKERS = ("Ġ", "▁")
# Byte-level BPE spells line breaks and tabs as these: a piece led by one starts a word too.
BYTE_LEVEL_SPACES = ("Ċ", "ĉ", "č")


def word_marker(tokenizer: Any) -> str | None:
    """The word marker a ``tokenizers.Tokenizer``'s vocabulary uses - ``"##"``, ``"Ġ"`` or
    ``"▁"``, whichever prefixes the most tokens - or ``None`` when it has none."""
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    counts = {
        marker: sum(token.startswith(marker) and len(token) > len(marker) for token in vocab)
        for marker in (*CONTINUATION_MARKERS, *START_MARKERS)
    }
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def continuation_table(tokenizer: Any, marker: str | None = None) -> torch.Tensor:
    """(V,) bool: True for the ids whose token continues the word before it.

    ``marker`` (default: :func:`word_marker`) says how the vocabulary marks words: WordPiece's
    ``"##"`` prefixes continuing pieces; byte-level BPE's ``"Ġ"`` and SentencePiece's ``"▁"``
    prefix word-initial pieces, so every other piece continues a word (except special tokens,
    and byte-level pieces led by a line break or tab, which start one). ``tokenizer`` is a
    ``tokenizers.Tokenizer``; one without any marker (e.g. characters) is a
    :class:`TriformError`.
    """
    marker = marker if marker is not None else word_marker(tokenizer)
    if marker is None:
        raise TriformError(
            "the tokenizer marks no word boundaries (no ##, Ġ or ▁ pieces): whole-word "
            "masking needs a WordPiece, byte-level BPE or SentencePiece vocabulary"
        )
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    table = torch.zeros(size, dtype=torch.bool)
    special = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    for token, index in tokenizer.get_vocab(with_added_tokens=True).items():
        if marker in CONTINUATION_MARKERS:
            table[index] = token.startswith(marker) and len(token) > len(marker)
        else:
            starts = token.startswith((marker, *BYTE_LEVEL_SPACES)) or token in special
            table[index] = not starts
    return table


def word_start_table(tokenizer: Any) -> np.ndarray | None:
    """(V,) bool: True for the ids that begin a word (the complement of
    :func:`continuation_table`), or ``None`` for a tokenizer that marks no word boundaries.
    Readers use it so that no window begins inside a word."""
    if word_marker(tokenizer) is None:
        return None
    return (~continuation_table(tokenizer)).numpy()


class MaskedLM(Objective):
    """BERT/RoBERTa masked language modelling; see the module docstring."""

    name = "mlm"
    resamplable = True
    config_class = MaskedLMConfig
    form = "encoder"

    def __init__(self, config: MaskedLMConfig, *, is_continuation: torch.Tensor | None = None):
        super().__init__(config)
        require(config, "mask_id", "the tokenizer's mask token")
        self.is_special = id_table(
            config.vocab_size, [*config.special_ids, config.pad_id, config.mask_id]
        )  # (V,)
        self.replacement_ids = torch.arange(config.vocab_size)[~self.is_special]  # (V',)
        if self.replacement_ids.numel() == 0:
            raise ConfigError("objective.special_ids: every id is special; nothing to sample")
        if is_continuation is not None and is_continuation.shape != (config.vocab_size,):
            raise ConfigError(
                f"is_continuation must have shape ({config.vocab_size},), "
                f"got {tuple(is_continuation.shape)}"
            )
        self.is_continuation = is_continuation

    @classmethod
    def from_dict(cls, options: Any, **context: Any) -> MaskedLM:
        """As :meth:`Objective.from_dict`; for whole-word masking the context may also carry
        ``is_continuation`` (a (V,) table) or ``tokenizer`` to build one from."""
        config = make_config(cls.config_class, options, context)
        table = context.get("is_continuation")
        if table is None and config.whole_word and context.get("tokenizer") is not None:
            table = continuation_table(context["tokenizer"])
        return cls(config, is_continuation=table)

    # -- the run around it ----------------------------------------------------------------
    @classmethod
    def fit_model_config(cls, config: ModelConfig) -> ModelConfig:
        """An MLM head and nothing the MLM loss does not train: no pair head, no pooler
        (a BERT preset's would be computed at every step and learn nothing)."""
        return config.replace(encoder_head="mlm", pair_head="none", pooler=False)

    def readers(self, data: RunData) -> tuple[PackedSequences, PackedSequences]:
        """Full packed sequences (RoBERTa's FULL-SENTENCES), framed by the special tokens."""
        return data.shard_readers(PackedSequences, data.run.data.seq_len, **data.framing())

    # -- the transform --------------------------------------------------------------------
    def __call__(self, batch: Batch, draws: SampleDraws) -> Batch:
        ids = batch["input_ids"]  # (B, L)
        attention_mask = default_attention_mask(batch, self.config.pad_id)
        masked, labels = self.mask(
            ids, attention_mask, self._draw(batch, draws), batch.get("word_start")
        )
        out = {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}
        if "token_type_ids" in batch:
            out["token_type_ids"] = batch["token_type_ids"]
        return out

    def mask(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor,
        draw: Draw,
        word_start: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels), both (B, L), from uniform draws ``draw(stream)``."""
        selected = self.select(ids, attention_mask, draw, word_start)
        return self.corrupt(ids, selected, draw(1), draw(2))

    def corrupt(
        self, ids: torch.Tensor, selected: torch.Tensor, kind: torch.Tensor, pick: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The 80/10/10 replacement of the ``selected`` (B, L) positions of ``ids`` (B, L):
        ``[MASK]`` where ``kind < mask_token_prob``, a random non-special token (chosen by
        ``pick``) where ``kind`` falls in the next ``random_token_prob``, unchanged otherwise.
        ``kind`` and ``pick`` are (B, L) uniform draws. Returns (masked ids, labels)."""
        c = self.config
        to_mask = selected & (kind < c.mask_token_prob)
        to_random = selected & ~to_mask & (kind < c.mask_token_prob + c.random_token_prob)
        table = self.replacement_ids.to(ids.device)
        index = (pick * table.numel()).long().clamp(max=table.numel() - 1)
        masked = torch.where(to_random, table[index], ids)
        masked = masked.masked_fill(to_mask, c.mask_id)
        labels = ids.masked_fill(~selected, IGNORE_INDEX)
        return masked, labels

    def select(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor,
        draw: Draw,
        word_start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) bool: the positions to predict."""
        c = self.config
        candidate = attention_mask.bool() & ~self.is_special.to(ids.device)[ids]  # (B, L)
        positions = torch.arange(ids.size(1), device=ids.device).expand_as(ids)
        if c.whole_word:
            start = self._word_starts(ids, candidate, word_start)
            # the position of each token's word start (cumulative max of start positions)
            start_of = torch.where(start, positions, 0).cummax(dim=1).values  # (B, L)
        else:
            start, start_of = candidate, positions
        keys = draw(0)  # (B, L): one uniform per unit, read at the unit's start
        if c.selection == "bernoulli":
            chosen = start & (keys < c.mask_prob)
        else:
            chosen = self._exact(candidate, start, start_of, keys, draw(3))
        return chosen.gather(1, start_of) & candidate

    def _word_starts(
        self, ids: torch.Tensor, candidate: torch.Tensor, word_start: torch.Tensor | None
    ) -> torch.Tensor:
        if word_start is None:
            if self.is_continuation is None:
                raise TriformError(
                    "whole-word masking needs batch['word_start'] or an is_continuation table "
                    "(build one with continuation_table(tokenizer))"
                )
            word_start = ~self.is_continuation.to(ids.device)[ids]
        # a piece after a non-candidate (e.g. "[CLS] ##ing") starts a word of its own
        previous = torch.nn.functional.pad(candidate[:, :-1], (1, 0), value=False)
        return candidate & (word_start.bool() | ~previous)

    def _exact(
        self,
        candidate: torch.Tensor,
        start: torch.Tensor,
        start_of: torch.Tensor,
        keys: torch.Tensor,
        straddle: torch.Tensor,
    ) -> torch.Tensor:
        """``round(p * n)`` tokens per row: exactly, or for whole words, on average: words in
        random order while they fit, and the word that straddles the budget with the
        probability of the fraction of it that fits. (B, L) bool"""
        budget = torch.round(candidate.sum(1).double() * self.config.mask_prob)  # (B,)
        if not self.config.whole_word:
            return choose(start, budget.long(), keys)
        size = torch.zeros_like(start, dtype=torch.long)
        size.scatter_add_(1, start_of, candidate.long())  # (B, L): word length at its start
        order = keys.masked_fill(~start, 2.0).argsort(dim=1)  # words first, in random order
        size = size.gather(1, order)
        after = size.cumsum(1)  # (B, L) tokens taken up to and including each word
        room = budget.unsqueeze(1) - (after - size)  # budget left before each word
        fits = after <= budget.unsqueeze(1)
        straddles = ~fits & (room > 0) & (straddle < room / size.clamp(min=1))
        taken = (fits | straddles) & start.gather(1, order)
        return torch.zeros_like(start).scatter_(1, order, taken)

    def _draw(self, batch: Batch, draws: SampleDraws) -> Draw:
        ids = batch["input_ids"]
        if self.config.masking == "dynamic":
            return lambda stream: draws.uniform(ids.size(1), stream).to(ids.device)
        if "example_ids" not in batch:
            raise TriformError(
                "static masking needs batch['example_ids']: a stable (B,) index of each example"
            )
        example = batch["example_ids"].to(ids.device).view(-1, 1)  # (B, 1)
        position = torch.arange(ids.size(1), device=ids.device).view(1, -1)  # (1, L)
        seed = self.config.static_seed

        def draw(stream: int) -> torch.Tensor:
            return hash_uniform(seed, torch.tensor(stream), example, position)

        return draw
