"""The objective protocol and the glue every objective shares.

An objective is one class in one module of this package holding everything about it:

- its config (a dataclass: ``config_class``), read from the run's ``[objective]`` table;
- the vectorised transform ``__call__(reader_batch, draws) -> batch``: all its randomness
  from ``draws``, a :class:`~triform.objectives.ops.SampleDraws` keyed by the run seed and
  each row's global ``sample_index`` (or for static masking from a hash of a fixed seed), so
  that a sample is drawn the same however the global batch is split;
- the model form it trains (``form``), what it needs of the model config
  (:meth:`Objective.fit_model_config`) and how the model is built (:meth:`Objective.build_model`,
  e.g. ELECTRA's generator + discriminator pair);
- which reader feeds it (:meth:`Objective.readers`);
- the loss of one step (:meth:`Objective.step` over :meth:`Objective.loss`, with the same
  rows' ``draws`` for what it samples, e.g. ELECTRA's replacements), which loss part
  perplexity is reported from (``perplexity_of``), and for generative objectives a text
  sample (:meth:`Objective.sample`).

:class:`~triform.train.task.PretrainingTask` joins an objective to its readers and model
for a run; the one Trainer is the same for every objective. The registry is
:data:`triform.objectives.OBJECTIVES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from triform.config import ModelConfig, check_types, from_dict
from triform.errors import ConfigError
from triform.models import build_model
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share, token_cross_entropy
from triform.objectives.ops import Batch, SampleDraws

if TYPE_CHECKING:
    from triform.train.task import RunData

# The batch keys a model takes; everything else an objective returns is a target.
MODEL_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "decoder_input_ids",
    "decoder_attention_mask",
)

Draw = Callable[[int], torch.Tensor]  # stream -> uniform [0, 1) floats of the batch's (B, L)
Step = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (loss, detached parts and metrics)


class Objective:
    """Turns a reader's batch of token ids into model inputs and targets, and scores a model
    on them; see the module docstring.

    Subclasses set ``name`` (the registry name), ``config_class`` (a dataclass) and ``form``,
    and implement ``__call__`` and :meth:`readers`; the other hooks have defaults.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    form: ClassVar[str]  # the model form trained: "encoder", "decoder" or "encoder-decoder"
    input_paths: ClassVar[tuple[str, ...]] = ()  # keys that are paths (resolved like the run's)
    perplexity_of: ClassVar[str | None] = "loss"  # the loss part perplexity is exp of
    # the model continues text: the trainer prints a sample at each evaluation (top-k 40,
    # temperature 0.8, seed 0: :meth:`triform.train.task.PretrainingTask.sample`)
    generative: ClassVar[bool] = False
    # the loss reads logits and labels at labelled positions only (see :meth:`step`)
    loss_at_labels: ClassVar[bool] = False
    # reads packed token windows, which data.subword_sampling can segment afresh
    resamplable: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], **context: Any) -> Objective:
        """Build from the ``[objective]`` table of a run config.

        ``options`` are the user's keys (``name`` is allowed and ignored); an unknown key or a
        bad value is a :class:`ConfigError` naming it. ``context`` fills fields the user did
        not set, typically the tokenizer's ids (see :func:`context_from_tokenizer`); context
        keys that are not fields of this objective's config are ignored.
        """
        return cls(make_config(cls.config_class, options, context))

    # -- the run around it (class-level: known before a tokenizer exists) ------------------
    @classmethod
    def trains(cls, form: str) -> bool:
        """Whether this objective can train a model of ``form`` (default: ``form`` only)."""
        return form == cls.form

    @classmethod
    def run_defaults(cls, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Defaults this objective sets in other sections of the run, ``{section: {key:
        value}}``, under the user's keys; ``[model]`` defaults apply only when the user names
        no preset (a preset is a whole base of its own). ``options`` is the ``[objective]``
        table. E.g. distillation takes the teacher's tokenizer and shape."""
        return {}

    @classmethod
    def check_run(cls, run: Any) -> None:
        """Raise :class:`ConfigError` when the run config cannot feed this objective
        (called before anything is built; subclasses extend it). Whether the objective can
        take ``data.subword_sampling`` (``resamplable``) is checked by the run config, which
        knows every objective."""

    @classmethod
    def fit_model_config(cls, config: ModelConfig) -> ModelConfig:
        """The model config with the heads this objective trains, and none it does not: a
        head that no loss uses would learn nothing, cost a forward at every step, and
        (its outputs computed but unused) break DDP's gradient reduction."""
        return config

    @classmethod
    def unused_parameters(cls, config: ModelConfig) -> bool:
        """Whether some parameters of the model get no gradient (DDP must be told)."""
        return False

    def build_model(self, config: ModelConfig) -> nn.Module:
        """The model trained (``config`` is already fitted)."""
        return build_model(config)

    def readers(self, data: RunData) -> tuple[Any, Any]:
        """The (shuffled train, fixed validation) readers that feed this objective."""
        raise NotImplementedError

    # -- the transform ----------------------------------------------------------------------
    def __call__(self, batch: Batch, draws: SampleDraws) -> Batch:
        """The model inputs and targets of a reader's ``batch``; row ``b`` draws from row
        ``b`` of ``draws`` (:meth:`SampleDraws.of` the batch, with the run seed)."""
        raise NotImplementedError

    def source_length(self, seq_len: int) -> int:
        """The length of the token windows a reader must supply so that the model input is
        ``seq_len`` long (causal LM: one more; span corruption: more)."""
        return seq_len

    def target_length(self, seq_len: int) -> int | None:
        """The decoder length for an input of ``seq_len`` (encoder-decoder objectives whose
        target length follows from the input); ``None`` otherwise."""
        return None

    @staticmethod
    def model_inputs(batch: Batch) -> Batch:
        """The keys of ``batch`` that are model arguments (see ``MODEL_KEYS``)."""
        return {key: batch[key] for key in MODEL_KEYS if key in batch}

    # -- the loss ---------------------------------------------------------------------------
    def counts(self, batch: Batch) -> Counts:
        """What each term of the loss averages over in ``batch`` (no forward needed): by
        default one term, ``"tokens"``, the labelled tokens. The trainer sums these over a
        step's micro-batches and processes and hands the totals to :meth:`step`."""
        return {"tokens": labelled(batch["labels"])}

    def loss(self, output: Any, batch: Batch, totals: Counts | None = None) -> Step:
        """The training loss from a model output (``.logits``) and this objective's batch;
        returns ``(loss, parts)`` with detached component losses in ``parts``. With
        ``totals`` (the step's counts, see :meth:`counts`) the loss is this batch's share
        of the step's loss (:func:`~triform.nn.losses.loss_share`)."""
        loss = token_cross_entropy(output.logits, batch["labels"])
        return loss_share(loss, "tokens", {"tokens": labelled(batch["labels"])}, totals), {}

    def step(
        self,
        model: nn.Module,
        batch: Batch,
        draws: SampleDraws | None,
        totals: Counts | None = None,
    ) -> Step:
        """Forward ``model`` on ``batch``: the loss and its parts, with token accuracy.
        ``draws`` are the rows' draws, for objectives that sample in the step (ELECTRA).
        With ``totals`` (the step's counts of every loss term, see :meth:`counts`) the loss
        is this batch's share of the step's loss; without, its own mean.

        The model does no more work than the loss needs: with the default :meth:`loss` (token
        cross entropy over ``labels``) it computes the loss itself, fused with the vocabulary
        projection at the labelled positions only (``model(..., labels=...)``: no logits
        for unlabelled or padded positions, none kept whole); an objective whose own loss
        reads logits and labels at the labelled positions only sets ``loss_at_labels`` and
        gets logits there (``model(..., logits_at=...)``) and labels gathered to match.
        """
        inputs = self.model_inputs(batch)
        labels = batch.get("labels")
        if labels is not None and type(self).loss is Objective.loss:
            output = model(**inputs, labels=labels)
            counted = labels[labels != IGNORE_INDEX]  # (N,) in the order of the predictions
            loss = loss_share(output.loss, "tokens", self.counts(batch), totals)
            return loss, {"accuracy": prediction_accuracy(output.predictions, counted)}
        if labels is not None and self.loss_at_labels:
            at = labels != IGNORE_INDEX  # (B, L)
            output = model(**inputs, logits_at=at)
            batch = {**batch, "labels": labels[at]}  # (N,), matching logits (N, V)
        else:
            output = model(**inputs)
        loss, parts = self.loss(output, batch, totals)
        parts.update(token_accuracy(output, batch))
        return loss, parts


def masked_and_real_tokens(batch: Batch) -> Counts:
    """The counts of an objective with a term over its labelled tokens (``"tokens"``) and
    one over every real token (``"positions"``): ELECTRA, distillation."""
    return {
        "tokens": labelled(batch["labels"]),
        "positions": (batch["attention_mask"] != 0).sum(),
    }


def token_accuracy(output: Any, batch: Batch) -> dict[str, torch.Tensor]:
    """Token accuracy over the labelled positions (empty when the output has no token
    logits). Logits (..., V) and labels (...): (B, L, V) and (B, L), or (N, V) and (N,)."""
    labels = batch.get("labels")
    logits = output.logits
    if labels is None or logits is None or logits.dim() != labels.dim() + 1 or logits.dim() < 2:
        return {}
    counted = labels != IGNORE_INDEX
    correct = (logits.argmax(-1) == labels) & counted
    return {"accuracy": correct.sum() / counted.sum().clamp(min=1)}


def prediction_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of ``predictions`` (N,) equal to ``labels`` (N,) (zero when N is 0)."""
    return (predictions == labels).sum() / max(labels.numel(), 1)


# ---------------------------------------------------------------------------------------
# Config handling
# ---------------------------------------------------------------------------------------
def make_config(cls: type, options: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
    """``cls`` built from user ``options`` over ``context`` defaults, validated."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"[objective] must be a table, got {type(options).__name__}")
    values = {key: value for key, value in options.items() if key != "name"}
    for f in dataclasses.fields(cls):
        if f.name not in values and context.get(f.name) is not None:
            values[f.name] = context[f.name]
    return from_dict(cls, values, "objective")


def check_config(config: Any) -> None:
    """Type-check every field of an objective config (call first in ``__post_init__``)."""
    check_types(config, "objective")


def check_fraction(config: Any, *names: str, upper_inclusive: bool = True) -> None:
    """Each named field must lie in [0, 1] (or [0, 1) with ``upper_inclusive=False``)."""
    for name in names:
        value = getattr(config, name)
        if not (0.0 <= value <= 1.0) or (not upper_inclusive and value == 1.0):
            bound = "1]" if upper_inclusive else "1)"
            raise ConfigError(f"objective.{name} must be in [0, {bound}, got {value}")


def require(config: Any, name: str, why: str) -> None:
    """A field that may default to ``None`` but is needed: a ConfigError saying why."""
    if getattr(config, name) is None:
        raise ConfigError(f"objective.{name} is required ({why})")


def check_vocab_ids(config: Any, vocab_size: int, *names: str) -> None:
    """Each named id field (an int or a list of ints) must be a valid id in ``[0, V)``."""
    for name in names:
        value = getattr(config, name)
        ids = value if isinstance(value, list) else [value]
        for i in ids:
            if i is not None and not 0 <= i < vocab_size:
                raise ConfigError(
                    f"objective.{name}: id {i} is outside the vocabulary [0, {vocab_size})"
                )
