"""ELECTRA replaced-token detection.

A small generator is trained with MLM; its samples replace the masked tokens, and the
discriminator predicts for every token whether it was replaced. One step:

1. ``batch = objective(reader_batch, draws)`` masks ~15% of the tokens (ELECTRA: 85%
   ``[MASK]``, 15% unchanged, no random tokens) and keeps the ``original_ids``;
2. the generator (an ``EncoderModel`` with an MLM head) reads ``batch``: ``logits`` (B, L, V);
3. :func:`sample_replacements` samples a token at each selected position from the generator's
   softmax (no gradient flows through the sampling; the draw at a position is keyed by the
   row's sample index and the position) and builds the discriminator batch:
   ``input_ids`` with the samples in place and ``labels`` 1 where the sample differs from
   the original, 0 elsewhere (-100 on padding; a sample equal to the original is "original",
   as in ELECTRA);
4. the discriminator (an ``EncoderModel`` with an ``rtd`` head) reads it: ``logits`` (B, L);
5. :func:`electra_loss` = generator MLM loss + ``discriminator_weight`` (50) x discriminator
   binary cross entropy.

:meth:`ReplacedTokenDetection.step` does 2-5. The two models share their token, position and
segment embeddings (and the embedding norm): :func:`share_embeddings`; a generator a quarter
of the discriminator's width is :func:`generator_config`.

Consumes ``input_ids``, optionally ``attention_mask`` and ``token_type_ids``; produces
``input_ids``, ``attention_mask``, ``labels`` (MLM), ``original_ids`` and ``token_type_ids``
if given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from triform.config import ModelConfig
from triform.errors import ConfigError, TriformError
from triform.models import build_model
from triform.models.base import TransformerModel
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share, token_cross_entropy
from triform.objectives.base import Step, masked_and_real_tokens
from triform.objectives.masked_lm import MaskedLM, MaskedLMConfig
from triform.objectives.ops import Batch, SampleDraws

REPLACEMENT = 8  # the draws' stream of the sampled replacements (masking uses 0-3)


@dataclass
class ReplacedTokenConfig(MaskedLMConfig):
    """The generator's masking (ELECTRA's defaults) and the discriminator loss weight."""

    mask_token_prob: float = 0.85
    random_token_prob: float = 0.0
    discriminator_weight: float = 50.0
    """Weight λ of the discriminator's loss beside the generator's MLM loss."""
    generator_width: float = 0.25
    """The generator's hidden size as a fraction of the discriminator's."""
    generator_depth: float = 1.0
    """The generator's layers as a fraction of the discriminator's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.discriminator_weight < 0:
            raise ConfigError(
                f"objective.discriminator_weight must be >= 0, got {self.discriminator_weight}"
            )
        for name in ("generator_width", "generator_depth"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"objective.{name} must be in (0, 1], got {getattr(self, name)}")


@torch.no_grad()
def sample_replacements(generator_logits: torch.Tensor, batch: Batch, draws: SampleDraws) -> Batch:
    """The discriminator's batch from the generator's logits on an objective batch: (B, L, V),
    or (N, V) at the selected positions only (row-major order, ``logits_at=selected``).

    At each selected position (``labels != -100``) a token is sampled from
    ``softmax(generator_logits)`` by inverse-CDF sampling with one uniform draw, keyed by the
    row's sample and the position (``draws``, the batch's rows: a position samples the same
    whichever rows share its batch).
    Returns ``input_ids`` (B, L), ``attention_mask``, ``labels`` (B, L): 1 replaced, 0 original,
    -100 on padding, and ``token_type_ids`` when the batch has them.
    """
    original = batch["original_ids"]  # (B, L)
    selected = batch["labels"] != IGNORE_INDEX  # (B, L)
    logits = generator_logits.detach()
    logits = (logits[selected] if logits.dim() == 3 else logits).float()  # (N, V)
    cdf = logits.softmax(-1).cumsum(-1)  # (N, V)
    rows, columns = selected.nonzero(as_tuple=True)  # (N,) each, row-major as the logits
    u = draws.at(rows, columns, REPLACEMENT).to(logits.device)
    draw = u.unsqueeze(1) * cdf[:, -1:]  # (N, 1)
    sampled = torch.searchsorted(cdf, draw, right=True).clamp(max=logits.size(-1) - 1)
    replaced = original.clone()
    replaced[selected] = sampled.squeeze(1).to(original.dtype)
    attention_mask = batch["attention_mask"]
    labels = (replaced != original).long().masked_fill(attention_mask == 0, IGNORE_INDEX)
    out = {"input_ids": replaced, "attention_mask": attention_mask, "labels": labels}
    if "token_type_ids" in batch:
        out["token_type_ids"] = batch["token_type_ids"]
    return out


def electra_loss(
    generator_logits: torch.Tensor,
    mlm_labels: torch.Tensor,
    discriminator_logits: torch.Tensor,
    rtd_labels: torch.Tensor,
    discriminator_weight: float = 50.0,
    totals: Counts | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ELECTRA's loss: generator MLM cross entropy + ``discriminator_weight`` x the mean
    binary cross entropy of the discriminator over real tokens.

    generator_logits: (B, L, V) with mlm_labels (B, L) (-100 where not masked), or (N, V)
    with (N,) at the masked positions only;
    discriminator_logits: (B, L); rtd_labels: (B, L) of 0/1 (-100 on padding).
    Returns ``(loss, {"generator_loss", "discriminator_loss", "discriminator_accuracy"})``.
    With ``totals`` each term is this batch's share of the step's mean over its masked
    tokens (``"tokens"``) and real tokens (``"positions"``).
    """
    generator_loss = token_cross_entropy(generator_logits, mlm_labels)
    counted = rtd_labels != IGNORE_INDEX
    weight = counted.float()
    per_token = F.binary_cross_entropy_with_logits(
        discriminator_logits.float(), rtd_labels.clamp(min=0).float(), reduction="none"
    )
    tokens = weight.sum().clamp(min=1)
    discriminator_loss = (per_token * weight).sum() / tokens
    correct = ((discriminator_logits > 0).long() == rtd_labels) & counted
    parts = {
        "generator_loss": generator_loss.detach(),
        "discriminator_loss": discriminator_loss.detach(),
        "discriminator_accuracy": correct.sum() / tokens,
    }
    counts = {"tokens": labelled(mlm_labels), "positions": counted.sum()}
    generator_share = loss_share(generator_loss, "tokens", counts, totals)
    discriminator_share = loss_share(discriminator_loss, "positions", counts, totals)
    return generator_share + discriminator_weight * discriminator_share, parts


class ReplacedTokenDetection(MaskedLM):
    """ELECTRA pretraining; see the module docstring."""

    name = "rtd"
    config_class = ReplacedTokenConfig
    perplexity_of = None  # the generator's MLM loss says little about the discriminator

    @classmethod
    def fit_model_config(cls, config: ModelConfig) -> ModelConfig:
        """The discriminator's config: a replaced-token head, no pair head, no pooler."""
        return config.replace(encoder_head="rtd", pair_head="none", pooler=False)

    def build_model(self, config: ModelConfig) -> ElectraPair:
        """The generator (built first) and the discriminator, sharing embeddings."""
        c = self.config
        generator = build_model(generator_config(config, c.generator_width, c.generator_depth))
        return ElectraPair(generator, build_model(config), self)

    def __call__(self, batch: Batch, draws: SampleDraws) -> Batch:
        out = super().__call__(batch, draws)
        out["original_ids"] = batch["input_ids"]
        return out

    def counts(self, batch: Batch) -> Counts:
        """Masked tokens (the generator's MLM) and real tokens (the discriminator's)."""
        return masked_and_real_tokens(batch)

    def step(
        self,
        model: nn.Module,
        batch: Batch,
        draws: SampleDraws,
        totals: Counts | None = None,
    ) -> Step:
        """``model`` is an :class:`ElectraPair` (or a DDP/FSDP wrapper of one)."""
        return model(batch, draws, totals)

    def pair_step(
        self,
        generator_model: nn.Module,
        discriminator_model: nn.Module,
        batch: Batch,
        draws: SampleDraws,
        totals: Counts | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Generator forward (its vocabulary projection at the masked positions only),
        sampling, discriminator forward and :func:`electra_loss`."""
        selected = batch["labels"] != IGNORE_INDEX  # (B, L)
        generator_output = generator_model(**self.model_inputs(batch), logits_at=selected)
        discriminator_batch = sample_replacements(generator_output.logits, batch, draws)
        discriminator_output = discriminator_model(**self.model_inputs(discriminator_batch))
        return electra_loss(
            generator_output.logits,  # (N, V)
            batch["labels"][selected],
            discriminator_output.logits,
            discriminator_batch["labels"],
            self.config.discriminator_weight,
            totals,
        )

    def loss(
        self, output: Any, batch: Batch, totals: Counts | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise TriformError(
            "replaced-token detection needs two models: use ReplacedTokenDetection.pair_step"
        )


def generator_config(discriminator: Any, width: float = 0.25, depth: float = 1.0) -> Any:
    """The ELECTRA generator's ``ModelConfig`` for a discriminator's: ``width`` times its
    hidden size (heads of 64, feed-forward 4x hidden), ``depth`` times its layers, the same
    embedding size (so that the embeddings can be shared) and an MLM head."""
    hidden = max(1, round(discriminator.hidden_size * width))
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    return discriminator.replace(
        hidden_size=hidden,
        num_heads=heads,
        head_dim=None,
        ffn_size=4 * hidden,
        num_layers=max(1, round(discriminator.num_layers * depth)),
        embedding_size=discriminator.embed_size,
        encoder_head="mlm",
        pair_head="none",
    )


def share_embeddings(generator_model: nn.Module, discriminator_model: nn.Module) -> None:
    """Make the generator use the discriminator's token, position and segment embeddings and
    embedding norm (ELECTRA shares them); its tied output layer follows the shared table.

    Both are ``EncoderModel``s with the same embedding size.
    """
    mine, theirs = generator_model.embeddings, discriminator_model.embeddings
    if mine.token.weight.shape != theirs.token.weight.shape:
        raise TriformError(
            "ELECTRA generator and discriminator need the same vocabulary and embedding size "
            f"to share embeddings, got {tuple(mine.token.weight.shape)} and "
            f"{tuple(theirs.token.weight.shape)}"
        )
    for name in ("token", "position", "segment", "norm"):
        if getattr(mine, name) is not None and getattr(theirs, name) is not None:
            setattr(mine, name, getattr(theirs, name))
    head = getattr(generator_model, "lm_head", None)
    if head is not None and generator_model.config.tie_embeddings:
        head.decoder.weight = theirs.token.weight


class ElectraPair(TransformerModel):
    """ELECTRA's generator and discriminator, sharing token embeddings, trained as one
    module so that DDP/FSDP see a single forward. Its state dict holds ``generator.*`` and
    ``discriminator.*``; a run folder of it loads either part (see :mod:`triform.runs`)."""

    parts = {"discriminator": "discriminator", "generator": "generator"}  # the default first

    def __init__(
        self, generator: nn.Module, discriminator: nn.Module, objective: ReplacedTokenDetection
    ) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.config = discriminator.config
        self._objective = objective
        share_embeddings(generator, discriminator)

    def forward(self, batch: Batch, draws: SampleDraws, totals: Counts | None = None) -> Step:
        return self._objective.pair_step(self.generator, self.discriminator, batch, draws, totals)
