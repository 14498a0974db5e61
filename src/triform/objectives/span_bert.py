"""SpanBERT (Joshi et al. 2020): span masking and the span boundary objective (SBO).

Masking. Spans of whole words are masked until ``mask_prob`` (15%) of a sequence's
candidate tokens are: each span's length in words is drawn from a geometric distribution
(``geometric_p`` = 0.2) truncated to ``max_span`` = 10 words (mean 3.8), its first word
uniformly among the sequence's words. Draws are made up front and taken in order (a draw may
run into words masked before; it adds only its new words) while they fit the budget; the
draw that crosses it keeps the whole words that fit, so a sequence has within one word of
``round(mask_prob * n)`` masked tokens. Word starts come from the tokenizer's markers
(:func:`~triform.objectives.masked_lm.continuation_table`: WordPiece ``##``, byte-level BPE
``Ġ``, SentencePiece ``▁``); with ``whole_word = false`` a token is a word. Each masked span
(a maximal run of masked tokens) is replaced as a whole: ``[MASK]`` for all its tokens (80%),
random tokens (10%) or left unchanged (10%).

Span boundary objective. Each masked token ``x_i`` of a span ``(s, e)`` is predicted again
from the encoder outputs of the two tokens just outside the span, ``h_{s-1}`` and
``h_{e+1}``, and an embedding of its position ``i - s`` in the span:
``y_i = LN(GELU(W2 · LN(GELU(W1 · [h_{s-1}; h_{e+1}; p_{i-s}]))))``, scored by the MLM head's
vocabulary projection (shared). Loss = MLM + ``sbo_weight`` x SBO (both mean cross entropy
over the masked tokens). No next-sentence prediction: sequences are full packed windows.

The model trained is a :class:`SpanBertModel`: the encoder (with its MLM head) under
``model.*`` and the SBO head under ``sbo_head.*``; the encoder alone is what later commands
read (``model.json`` is its config).

Consumes ``input_ids`` (B, L) and optionally ``attention_mask``, ``token_type_ids``,
``word_start``; produces ``input_ids`` (masked), ``attention_mask``, ``labels`` (-100 where
not masked), ``span_left`` / ``span_right`` (B, L) the boundary positions of each masked
token's span and ``span_position`` (B, L) its offset in the span (0 where not masked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from triform.config import ModelConfig
from triform.errors import ConfigError, TriformError
from triform.models import build_model
from triform.models.base import TransformerModel
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share, token_cross_entropy
from triform.nn.norms import make_norm
from triform.objectives.base import Step, token_accuracy
from triform.objectives.masked_lm import MaskedLM, MaskedLMConfig
from triform.objectives.ops import Batch, SampleDraws, default_attention_mask

# The draws' streams: span lengths and first words (one per span drawn), and per position
# the replacement kind (read at a span's first token) and the random token picked.
SPAN_LENGTH, SPAN_FIRST, KIND, PICK = 0, 1, 2, 3


@dataclass
class SpanMaskingConfig(MaskedLMConfig):
    """SpanBERT's settings (the paper's defaults); the MLM keys ``mask_prob``,
    ``mask_token_prob``, ``random_token_prob`` and ``special_ids`` apply per span."""

    whole_word: bool = True
    """Spans of whole words (``false``: every token is a word)."""
    geometric_p: float = 0.2
    """Span lengths in words follow Geo(p), truncated to ``[1, max_span]``."""
    max_span: int = 10
    """The longest span, in words."""
    sbo_weight: float = 1.0
    """Weight of the span boundary objective: loss = MLM + ``sbo_weight`` × SBO."""
    sbo_positions: int = 32
    """Position embeddings of the SBO head (offsets beyond share the last)."""
    selection: Literal["bernoulli", "exact"] = "exact"
    masking: Literal["dynamic", "static"] = "dynamic"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.geometric_p <= 1.0:
            raise ConfigError(f"objective.geometric_p must be in (0, 1], got {self.geometric_p}")
        for name in ("max_span", "sbo_positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"objective.{name} must be >= 1, got {getattr(self, name)}")
        if self.sbo_weight < 0:
            raise ConfigError(f"objective.sbo_weight must be >= 0, got {self.sbo_weight}")
        if self.selection != "exact":
            raise ConfigError("objective.selection: span masking always fills a budget (exact)")
        if self.masking != "dynamic":
            raise ConfigError("objective.masking: span masking is dynamic (as SpanBERT)")


def span_length_mean(p: float, max_span: int) -> float:
    """The mean of Geo(p) on {1, 2, ...} truncated to ``max_span`` (SpanBERT: 3.8)."""
    q = 1.0 - p
    weights = [p * q ** (k - 1) for k in range(1, max_span + 1)]
    return sum(k * w for k, w in enumerate(weights, start=1)) / sum(weights)


def sample_span_lengths(u: torch.Tensor, p: float, max_span: int) -> torch.Tensor:
    """Span lengths ~ Geo(p) truncated to [1, max_span], by inverting the truncated CDF of
    uniform draws ``u`` in [0, 1). Same shape as ``u``, int64."""
    if p >= 1.0:
        return torch.ones_like(u, dtype=torch.long)
    q = 1.0 - p
    # P(len <= k) = (1 - q^k) / (1 - q^max): the smallest k with that >= u
    tail = 1.0 - u.double() * (1.0 - q**max_span)  # in (q^max, 1]
    lengths = torch.floor(torch.log(tail) / math.log(q)).long() + 1
    return lengths.clamp(1, max_span)


def span_boundaries(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each position of the (B, L) bool mask ``selected``: the position just before its
    run of selected tokens, the position just after it (clamped to ``[0, L - 1]``) and its
    offset in the run; (B, L) int64 each, 0 where not selected."""
    batch, length = selected.shape
    positions = torch.arange(length, device=selected.device).expand(batch, length)
    previous = nn.functional.pad(selected[:, :-1], (1, 0), value=False)
    following = nn.functional.pad(selected[:, 1:], (0, 1), value=False)
    first = torch.where(selected & ~previous, positions, 0).cummax(1).values  # run start
    last_from_right = torch.where(selected & ~following, length - 1 - positions, 0)
    last = length - 1 - last_from_right.flip(1).cummax(1).values.flip(1)  # run end
    zero = torch.zeros_like(positions)
    left = torch.where(selected, (first - 1).clamp(min=0), zero)
    right = torch.where(selected, (last + 1).clamp(max=length - 1), zero)
    offset = torch.where(selected, positions - first, zero)
    return left, right, offset


class SpanBoundaryHead(nn.Module):
    """SpanBERT's SBO head: ``[h_left; h_right; p_offset]`` through two dense + GELU +
    LayerNorm layers to the input size of the MLM head's vocabulary projection.

    (N, H), (N, H), (N,) -> (N, E) with E the embedding size when the MLM head has a
    transform (BERT), else H.
    """

    def __init__(self, config: ModelConfig, positions: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        out = config.embed_size if config.lm_head_transform else hidden
        self.positions = nn.Embedding(positions, hidden)
        self.layers = nn.Sequential(
            nn.Linear(3 * hidden, hidden),
            nn.GELU(),
            make_norm(config, hidden),
            nn.Linear(hidden, out),
            nn.GELU(),
            make_norm(config, out),
        )
        std = config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self, left: torch.Tensor, right: torch.Tensor, offset: torch.Tensor
    ) -> torch.Tensor:
        offset = offset.clamp(max=self.positions.num_embeddings - 1)
        return self.layers(torch.cat([left, right, self.positions(offset)], dim=-1))


class SpanBertModel(TransformerModel):
    """The encoder (``model.*``, with its MLM head) and the SBO head (``sbo_head.*``), trained
    as one module so that DDP/FSDP see a single forward: ``model(batch, draws)`` returns
    the objective's ``(loss, parts)``. The run folder's ``model.json`` is the encoder's, and
    its ``parts.json`` tells every loader to read the encoder from ``model.*``."""

    parts = {"encoder": "model"}  # see triform.runs

    def __init__(self, encoder: nn.Module, objective: SpanMLM) -> None:
        super().__init__()
        self.model = encoder
        self.config = encoder.config
        self.sbo_head = SpanBoundaryHead(encoder.config, objective.config.sbo_positions)
        self._objective = objective

    def forward(self, batch: Batch, draws: SampleDraws, totals: Counts | None = None) -> Step:
        return self._objective.span_step(self.model, self.sbo_head, batch, totals)


class SpanMLM(MaskedLM):
    """SpanBERT pretraining; see the module docstring."""

    name = "span-mlm"
    config_class = SpanMaskingConfig
    perplexity_of = "mlm_loss"

    @classmethod
    def fit_model_config(cls, config: ModelConfig) -> ModelConfig:
        """An MLM head, no pair head (SpanBERT drops NSP) and no pooler."""
        return config.replace(encoder_head="mlm", pair_head="none", pooler=False)

    def build_model(self, config: ModelConfig) -> SpanBertModel:
        return SpanBertModel(build_model(config), self)

    # -- the transform --------------------------------------------------------------------
    def __call__(self, batch: Batch, draws: SampleDraws) -> Batch:
        ids = batch["input_ids"]  # (B, L)
        attention_mask = default_attention_mask(batch, self.config.pad_id)
        selected = self.select_spans(ids, attention_mask, draws, batch.get("word_start"))
        left, right, offset = span_boundaries(selected)
        # one replacement kind per span: the draw at the span's first token
        first = torch.arange(ids.size(1), device=ids.device) - offset  # (B, L)
        kind = draws.uniform(ids.size(1), KIND).to(ids.device).gather(1, first)
        pick = draws.uniform(ids.size(1), PICK).to(ids.device)
        masked, labels = self.corrupt(ids, selected, kind, pick)
        out = {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "labels": labels,
            "span_left": left,
            "span_right": right,
            "span_position": offset,
        }
        if "token_type_ids" in batch:
            out["token_type_ids"] = batch["token_type_ids"]
        return out

    def select_spans(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor,
        draws: SampleDraws,
        word_start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) bool: the masked positions, spans of whole words filling the budget."""
        c = self.config
        candidate = attention_mask.bool() & ~self.is_special.to(ids.device)[ids]  # (B, L)
        start = self._word_starts(ids, candidate, word_start) if c.whole_word else candidate
        word = start.long().cumsum(1) - 1  # (B, L) word index of each candidate token
        words = start.sum(1, keepdim=True)  # (B, 1)
        budget = torch.round(candidate.sum(1).double() * c.mask_prob).long()  # (B,)
        # one span more than the largest budget a row of this width can have: each adds at
        # least one token unless it lands wholly on masked words (rare), so the budget is
        # reached (K from the width alone: a row's spans do not depend on the other rows)
        spans = round(ids.size(1) * c.mask_prob) + 1
        u = draws.uniform(spans, SPAN_LENGTH).to(ids.device)
        lengths = sample_span_lengths(u, c.geometric_p, c.max_span)  # (B, K)
        u = draws.uniform(spans, SPAN_FIRST).to(ids.device)
        first = (u * words).long()  # (B, K) first word
        first = torch.minimum(first, (words - 1).clamp(min=0))
        # covered[b, k, t]: token t lies in draw k; union[b, k]: in one of draws 0..k
        w = word.unsqueeze(1)  # (B, 1, L)
        covered = (w >= first.unsqueeze(2)) & (w < (first + lengths).unsqueeze(2))
        covered &= candidate.unsqueeze(1)  # (B, K, L)
        union = covered.cummax(dim=1).values  # (B, K, L)
        after = union.sum(2)  # (B, K) tokens masked once draw k is taken
        fits = after <= budget.unsqueeze(1)  # a prefix of the draws (after only grows)
        taken = fits.sum(1)  # (B,) draws taken whole
        whole = union.gather(1, (taken - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, ids.size(1)))
        whole = whole.squeeze(1) & (taken > 0).unsqueeze(1)  # (B, L)
        # the draw that crosses the budget keeps its new words while they fit
        crossing = covered.gather(
            1, taken.clamp(max=spans - 1).view(-1, 1, 1).expand(-1, 1, ids.size(1))
        ).squeeze(1) & (taken < spans).unsqueeze(1)
        new = crossing & ~whole  # (B, L)
        running = new.long().cumsum(1)  # (B, L) new tokens up to each position
        at_word_end = torch.zeros_like(running).scatter_reduce_(
            1, word.clamp(min=0), running, reduce="amax"
        )  # (B, L): per word index, the count up to its last token
        room = (budget - whole.sum(1)).unsqueeze(1)  # (B, 1)
        keep = new & (at_word_end.gather(1, word.clamp(min=0)) <= room)
        return whole | keep

    # -- the loss -------------------------------------------------------------------------
    def step(
        self,
        model: nn.Module,
        batch: Batch,
        draws: SampleDraws,
        totals: Counts | None = None,
    ) -> Step:
        """``model`` is a :class:`SpanBertModel` (or a DDP/FSDP wrapper of one)."""
        return model(batch, draws, totals)

    def span_step(
        self,
        encoder: nn.Module,
        sbo_head: SpanBoundaryHead,
        batch: Batch,
        totals: Counts | None = None,
    ) -> Step:
        """Encoder forward, MLM loss, SBO loss: ``(mlm + sbo_weight * sbo, parts)``; both
        terms are means over the masked tokens (with ``totals``: this batch's share of the
        step's)."""
        output = encoder(**self.model_inputs(batch))
        labels = batch["labels"]  # (B, L)
        mlm_loss = token_cross_entropy(output.logits, labels)
        sbo_logits = self.sbo_logits(encoder, sbo_head, output.last_hidden_state, batch)  # (N, V)
        targets = labels[labels != IGNORE_INDEX]  # (N,)
        sbo_loss = token_cross_entropy(sbo_logits, targets)
        parts = {
            "mlm_loss": mlm_loss.detach(),
            "sbo_loss": sbo_loss.detach(),
            **token_accuracy(output, batch),
        }
        if targets.numel():
            parts["sbo_accuracy"] = (sbo_logits.argmax(-1) == targets).float().mean()
        counts = {"tokens": labelled(labels)}
        mlm_share = loss_share(mlm_loss, "tokens", counts, totals)
        sbo_share = loss_share(sbo_loss, "tokens", counts, totals)
        return mlm_share + self.config.sbo_weight * sbo_share, parts

    @staticmethod
    def sbo_logits(
        encoder: nn.Module, sbo_head: SpanBoundaryHead, hidden: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Vocabulary scores (N, V) of the SBO head for the N masked tokens of ``batch``
        (row-major order), from the encoder's hidden states (B, L, H)."""
        selected = batch["labels"] != IGNORE_INDEX  # (B, L)
        rows = torch.arange(hidden.size(0), device=hidden.device).unsqueeze(1).expand_as(selected)
        rows = rows[selected]  # (N,)
        left = hidden[rows, batch["span_left"][selected]]  # (N, H)
        right = hidden[rows, batch["span_right"][selected]]  # (N, H)
        features = sbo_head(left, right, batch["span_position"][selected])  # (N, E)
        head = encoder.lm_head
        if head is None:
            raise TriformError("the span boundary objective needs the encoder's MLM head")
        return head.decoder(features * head.output_scale)

    def loss(self, output: Any, batch: Batch, totals: Counts | None = None) -> Step:
        raise TriformError("span-mlm needs the SBO head: use SpanMLM.span_step")
