"""Sentence-pair objectives combined with MLM in one batch: next-sentence prediction (BERT)
and sentence-order prediction (ALBERT).

The reader builds the pairs ``[CLS] A [SEP] B [SEP]`` with ``token_type_ids`` and their
``pair_labels`` (B,):

- NSP: 0 = B is the segment that follows A, 1 = B is a random segment of another document
  (50% each);
- SOP: 0 = A and B are consecutive segments in order, 1 = the two are swapped (50% each).

This is HuggingFace's convention (``next_sentence_label`` / ``sentence_order_label``). The
reader draws each row's pair from a hash of (seed, its sample index), so a row is the same
pair whichever way the batch is split. The objective masks the pair as
:class:`~triform.objectives.masked_lm.MaskedLM` does (``[CLS]``/``[SEP]`` are special, never
selected) and carries ``token_type_ids`` and ``pair_labels`` through, so the batch holds
everything the model (``input_ids``, ``attention_mask``, ``token_type_ids``) and the loss
(``labels``, ``pair_labels``) need.
The loss is the sum of the MLM and the pair cross entropies, as in BERT and ALBERT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from triform.config import ModelConfig
from triform.data.readers import SentencePairs
from triform.errors import TriformError
from triform.nn.losses import Counts, labelled, loss_share, token_cross_entropy
from triform.objectives.base import check_fraction
from triform.objectives.masked_lm import MaskedLM, MaskedLMConfig
from triform.objectives.ops import Batch, SampleDraws

if TYPE_CHECKING:
    from triform.train.task import RunData


@dataclass
class SentencePairConfig(MaskedLMConfig):
    """The MLM settings of the pair objective (the pair task is fixed by the class) and how
    often the reader makes a short pair (BERT: 10%)."""

    short_seq_prob: float = 0.1
    """Probability that the reader makes a pair shorter than ``seq_len`` (BERT: 0.1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self, "short_seq_prob")


def pretraining_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pair_logits: torch.Tensor,
    pair_labels: torch.Tensor,
    totals: Counts | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BERT/ALBERT pretraining loss: MLM cross entropy + pair cross entropy.

    logits: (B, L, V), labels: (B, L) with -100 where not predicted; pair_logits: (B, 2),
    pair_labels: (B,). Returns ``(mlm + pair, {"mlm_loss", "pair_loss", "pair_accuracy"})``.
    The MLM term is a mean over the masked tokens, the pair term a mean over the sentence
    pairs (rows); with ``totals`` each is this batch's share of the step's mean over the
    step's masked tokens (``"tokens"``) and pairs (``"pairs"``).
    """
    mlm = token_cross_entropy(logits, labels)
    pair = F.cross_entropy(pair_logits.float(), pair_labels)
    accuracy = (pair_logits.argmax(-1) == pair_labels).float().mean()
    parts = {"mlm_loss": mlm.detach(), "pair_loss": pair.detach(), "pair_accuracy": accuracy}
    counts = {"tokens": labelled(labels), "pairs": pair_rows(pair_labels)}
    loss = loss_share(mlm, "tokens", counts, totals) + loss_share(pair, "pairs", counts, totals)
    return loss, parts


def pair_rows(pair_labels: torch.Tensor) -> torch.Tensor:
    """The sentence pairs of a batch, as a () tensor (a loss count)."""
    return torch.tensor(pair_labels.numel(), device=pair_labels.device)


class SentencePairObjective(MaskedLM):
    """MLM on a sentence pair plus its pair label; see the module docstring."""

    config_class = SentencePairConfig
    task: ClassVar[str]  # the pair head and reader mode: "nsp" or "sop"
    perplexity_of = "mlm_loss"
    resamplable = False  # sentence pairs, not packed windows

    @classmethod
    def fit_model_config(cls, config: ModelConfig) -> ModelConfig:
        return config.replace(encoder_head="mlm", pair_head=cls.task)

    @classmethod
    def unused_parameters(cls, config: ModelConfig) -> bool:
        return False  # the pair head reads the pooler: every parameter gets a gradient

    def readers(self, data: RunData) -> tuple[SentencePairs, SentencePairs]:
        return data.shard_readers(
            SentencePairs,
            data.run.data.seq_len,
            mode=self.task,
            special=data.special,
            short_seq_prob=self.config.short_seq_prob,
        )

    def __call__(self, batch: Batch, draws: SampleDraws) -> Batch:
        for key in ("token_type_ids", "pair_labels"):
            if key not in batch:
                raise TriformError(f"{self.name} needs batch[{key!r}] from a sentence-pair reader")
        out = super().__call__(batch, draws)
        out["token_type_ids"] = batch["token_type_ids"]
        out["pair_labels"] = batch["pair_labels"]  # (B,)
        return out

    loss_at_labels = True  # the MLM head runs at the masked positions only

    def counts(self, batch: Batch) -> Counts:
        """Masked tokens (the MLM term) and sentence pairs (the NSP / SOP term)."""
        return {"tokens": labelled(batch["labels"]), "pairs": pair_rows(batch["pair_labels"])}

    def loss(
        self, output: Any, batch: Batch, totals: Counts | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``output.logits`` (B, L, V) with labels (B, L), or (N, V) with labels (N,) at the
        masked positions, and ``output.pair_logits`` (B, 2)."""
        return pretraining_loss(
            output.logits, batch["labels"], output.pair_logits, batch["pair_labels"], totals
        )


class NextSentencePrediction(SentencePairObjective):
    """MLM + NSP (BERT)."""

    name = "mlm-nsp"
    task = "nsp"


class SentenceOrderPrediction(SentencePairObjective):
    """MLM + SOP (ALBERT)."""

    name = "mlm-sop"
    task = "sop"
