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

:class:`PretrainingTask` joins an objective to its readers and model for a run; the loop in
:mod:`triform.train.loop` is the same for every objective. The registry is
:data:`triform.objectives.OBJECTIVES`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from triform.config import ModelConfig, check_types, from_dict
from triform.data.readers import evaluation_samples, rank_slice
from triform.errors import ConfigError, TriformError
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share, token_cross_entropy
from triform.objectives.ops import Batch, SampleDraws
from triform.runtime.distributed import all_reduce_sums, rank, world_size
from triform.runtime.precision import autocast_context

if TYPE_CHECKING:
    import tokenizers

    from triform.tokenizers import SpecialTokens

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
    generative: ClassVar[bool] = False  # the trainer prints a sample at each evaluation
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
        (called before anything is built; subclasses extend it)."""
        if run.data.subword_sampling is not None and not cls.resamplable:
            from triform.objectives import OBJECTIVES  # the registry imports this module

            able = ", ".join(sorted(n for n, o in OBJECTIVES.items() if o.resamplable))
            raise ConfigError(
                f"data.subword_sampling: objective {cls.name} does not read packed token "
                f"windows; sampling works with {able}"
            )

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
        from triform.models import build_model

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

    def sample(
        self,
        model: nn.Module,
        tokenizer: tokenizers.Tokenizer,
        device: torch.device,
        tokens: int,
        prompt: str,
    ) -> str:
        """A text sample of ``tokens`` new tokens (generative objectives only)."""
        raise TriformError(f"objective {self.name} does not generate text")


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


@dataclasses.dataclass
class RunData:
    """What an objective's readers are made from: the run config, its tokenizer and special
    ids, and the tokenized ``(train, validation)`` shards (``None`` for runs that read
    ``data.sources``)."""

    run: Any
    tokenizer: tokenizers.Tokenizer
    special: SpecialTokens
    shards: tuple[Any, Any] | None

    @classmethod
    def of(cls, run: Any, tokenizer: tokenizers.Tokenizer, shards: Any) -> RunData:
        from triform.tokenizers import SpecialTokens

        return cls(run, tokenizer, SpecialTokens.from_tokenizer(tokenizer), shards)

    def shard_readers(self, reader_class: type, seq_len: int, **options: Any) -> tuple[Any, Any]:
        """The (shuffled train, fixed validation) readers of ``reader_class`` over the shards,
        each reading this rank's share of every global micro-batch."""
        if self.shards is None:
            raise TriformError("this objective reads tokenized shards, but the run has none")
        train_shards, val_shards = self.shards
        if val_shards.n_tokens == 0:
            raise TriformError("the validation split is empty; raise data.val_fraction")
        train, val = (
            reader_class(
                split,
                seq_len,
                self.micro_batch,
                self.run.train.seed,
                shuffle=shuffle,
                rank=rank(),
                world=world_size(),
                **options,
            )
            for split, shuffle in ((train_shards, True), (val_shards, False))
        )
        spec = self.run.data.subword_sampling
        if spec is not None:  # training windows segmented afresh, validation as stored
            train = self._resampled(train, spec)
        return train, val

    def _resampled(self, reader: Any, spec: dict[str, Any]) -> Any:
        """``reader`` (packed windows: see ``Objective.resamplable``) segmented afresh."""
        from triform.data.resampling import ResampledReader

        pad = self.special.pad_id if self.special.pad_id is not None else 0
        specials = set(self.special.all_special_ids)
        return ResampledReader(reader, self.tokenizer, spec, self.run.train.seed, specials, pad)

    @property
    def micro_batch(self) -> int:
        """Rows of one micro-batch over all ranks: ``train.batch_size / train.grad_accum``
        (each reader hands this rank ``1 / world`` of them)."""
        return self.run.train.batch_size // self.run.train.grad_accum

    def framing(self) -> dict[str, int | None]:
        """The ids that frame a sequence: ``[CLS] ... [SEP]`` or ``<s> ... </s>``."""
        s = self.special
        if s.cls_id is not None and s.sep_id is not None:
            return {"cls_id": s.cls_id, "sep_id": s.sep_id}
        return {"bos_id": s.bos_id, "eos_id": s.eos_id}


class PretrainingTask:
    """One run's objective with its readers and model: what the training loop drives.

    A task's batches are pure functions of ``(seed, global sample index)``: the readers
    number every row by its place in the run's stream of samples (``sample_index``), and the
    objective draws each row's masks, spans and samples from that index and the run seed
    (:class:`~triform.objectives.ops.SampleDraws`). So a resumed run is exact, and 1 process,
    N micro-batches and N processes train on the same batches. (Dropout is drawn from the
    global RNG, seeded per (step, rank): see :mod:`triform.train.loop`.)

    A loop calls :meth:`train_batch` for each micro-batch index ``step * grad_accum +
    micro`` (the readers hand this rank its share of it), moves the batch to the device,
    calls :meth:`loss` on it and :meth:`evaluate` every so often.
    """

    def __init__(self, objective: Objective, model_config: ModelConfig, data: RunData) -> None:
        self.objective, self.model_config, self.data = objective, model_config, data
        self.name = objective.name
        self.can_sample = objective.generative
        self.unused_parameters = objective.unused_parameters(model_config)
        self.seed = data.run.train.seed
        self.train_reader, self.val_reader = objective.readers(data)

    def build_model(self) -> nn.Module:
        return self.objective.build_model(self.model_config)

    def draws(self, batch: Batch, split: int = SampleDraws.TRAIN) -> SampleDraws:
        """The draws of ``batch``'s rows (by its ``sample_index``): keyed by the run seed in
        training; in validation by the samples alone, the same in every run (so runs of
        different seeds are scored on the same masked windows)."""
        seed = self.seed if split == SampleDraws.TRAIN else 0
        return SampleDraws.of(batch, seed, split)

    def prepare(self, batch: Batch, split: int = SampleDraws.TRAIN) -> Batch:
        """The objective's batch of a reader's ``batch``; it keeps the ``sample_index``
        (not a model input) so that :meth:`loss` draws for the same samples."""
        out = self.objective(batch, self.draws(batch, split))
        out["sample_index"] = batch["sample_index"]
        return out

    def train_batch(self, index: int) -> Batch:
        """The objective's micro-batch number ``index`` (this rank's share of it)."""
        return self.prepare(self.train_reader.batch(index))

    def loss(
        self,
        model: nn.Module,
        batch: Batch,
        split: int = SampleDraws.TRAIN,
        totals: Counts | None = None,
    ) -> Step:
        """The loss and its parts of an objective's ``batch`` (from :meth:`prepare`); with
        ``totals`` (the step's counts) the batch's share of the step's loss."""
        return self.objective.step(model, batch, self.draws(batch, split), totals)

    @staticmethod
    def tokens_in(batch: Batch) -> int:
        """Tokens the model reads in ``batch`` (from shapes only: no device sync)."""
        total = batch["input_ids"].numel()
        if "decoder_input_ids" in batch:
            total += batch["decoder_input_ids"].numel()
        return total

    def validation_samples(self, batches: int | str) -> np.ndarray:
        """The validation windows an evaluation reads (see :func:`evaluation_samples`):
        ``batches`` global batches of ``train.batch_size`` windows, or ``"all"``."""
        windows = None if batches == "all" else int(batches) * self.data.run.train.batch_size
        return evaluation_samples(self.val_reader.items_per_epoch, windows)

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        device: torch.device,
        precision: str,
        batches: int | str,
    ) -> dict[str, float]:
        """Mean loss and metrics over ``batches`` global batches of validation windows
        spread evenly across the whole split (``"all"``: every window), forward passes in
        ``precision``; the same windows and masks at every evaluation.

        The windows go through the model in micro-batches of the training's size, each rank
        scoring its share of every one; each micro-batch's metrics count with its number of
        labelled tokens (:func:`evaluation_weight`), the sums all-reduced, so that a token
        loss is the mean over all the windows' tokens whichever way they were batched. The
        metrics say what was read: ``eval_windows`` of the split's ``split_windows``
        (:func:`describe_evaluation` puts it in words).
        """
        model.eval()
        samples = self.validation_samples(batches)
        micro, here, world = self.data.micro_batch, rank(), world_size()
        totals: dict[str, float] = {}
        count = 0
        for begin in range(0, len(samples), micro):
            chunk = samples[begin : begin + micro]
            mine = chunk[rank_slice(len(chunk), here, world)]
            # a rank with no row of the last chunk still runs the forward (collectives)
            read = self.val_reader.read(mine if len(mine) else chunk[:1])
            batch = self.prepare(read, SampleDraws.VALIDATION)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(precision, device):
                loss, parts = self.loss(model, batch, SampleDraws.VALIDATION)
            weight = evaluation_weight(batch) if len(mine) else 0
            for key, value in {"loss": loss, **parts}.items():  # (a 0-weight NaN counts 0)
                totals[key] = totals.get(key, 0.0) + (float(value) * weight if weight else 0.0)
            count += weight
        totals, count = all_reduce_sums(totals, count)
        metrics = {key: value / max(count, 1) for key, value in totals.items()}
        source = self.objective.perplexity_of
        if source is not None and source in metrics:
            metrics["perplexity"] = math.exp(min(metrics[source], 50.0))
        metrics["eval_windows"] = len(samples)
        metrics["split_windows"] = self.val_reader.items_per_epoch
        return metrics

    def sample(self, model: nn.Module, device: torch.device, tokens: int, prompt: str) -> str:
        return self.objective.sample(model, self.data.tokenizer, device, tokens, prompt)


def evaluation_weight(batch: Batch) -> int:
    """What an objective batch's metrics count for in an evaluation's mean: its labelled
    tokens (``labels != -100``; a host sync), or its rows when it has no token labels."""
    labels = batch.get("labels")
    if labels is None or labels.dim() < 2:
        return len(batch["input_ids"])
    return int((labels != IGNORE_INDEX).sum())


EVALUATION_KEYS = ("eval_windows", "split_windows")  # what an evaluation read, not a score


def describe_evaluation(metrics: Mapping[str, float]) -> str | None:
    """One line saying which validation windows ``metrics`` (of :meth:`PretrainingTask.
    evaluate`) were computed on; ``None`` when they do not say (an older run's)."""
    if not all(key in metrics for key in EVALUATION_KEYS):
        return None
    read, total = int(metrics["eval_windows"]), int(metrics["split_windows"])
    if read >= total:
        return f"validation loss over the whole split ({total} windows)"
    return f"validation loss over {read} of {total} windows, spread evenly across the split"


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
