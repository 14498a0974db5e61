"""What every fine-tuning task provides, and the helpers they share.

A task turns rows of a data file into features (token ids and targets, plain lists), batches
them (padded tensors), computes the training loss of a :class:`FinetuneModel`, turns model
outputs back into one prediction per row, and scores predictions against references. The
trainer and :func:`evaluate` are the same for every task.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import tokenizers
import torch
from torch import nn
from tqdm import tqdm

from triform.config import ModelConfig
from triform.errors import TriformError, warn
from triform.finetune.config import TaskSection
from triform.finetune.data import Row
from triform.finetune.subwords import Framing, Sampler, epoch_sampler
from triform.models import TransformerModel
from triform.nn.losses import Counts
from triform.runtime.precision import autocast_context
from triform.tensors import pad_rows
from triform.tokenizers import SpecialTokens

Feature = dict[str, Any]
Batch = dict[str, torch.Tensor]


class FinetuneModel(nn.Module):
    """A pretrained ``body`` and the task's new ``head``: parameters are named ``body.*``
    and ``head.*``, which is how the optimizer gives them their two learning rates. The
    task (not this container) knows how to run them."""

    def __init__(self, body: TransformerModel, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, task: Task, batch: Batch, totals: Counts | None = None) -> torch.Tensor:
        """``task``'s training loss on ``batch`` (with ``totals``: the batch's share of the
        step's loss): the one call a DDP wrapper makes."""
        return task.loss(self, batch, totals)


def fit_length(max_length: int, config: ModelConfig) -> int:
    """``max_length``, capped by the model's position table (relative/rotary: no cap),
    with a warning when it is."""
    if config.position in ("learned", "sinusoidal") and max_length > config.max_positions:
        warn(
            f"task.max_length {max_length} is longer than the model's "
            f"{config.max_positions} positions: examples are cut to {config.max_positions} tokens"
        )
        return config.max_positions
    return max_length


def truncating(
    tokenizer: tokenizers.Tokenizer,
    max_length: int,
    stride: int = 0,
    strategy: str = "longest_first",
) -> tokenizers.Tokenizer:
    """A copy of ``tokenizer`` that cuts encodings (special tokens included) to
    ``max_length``; with ``stride`` the rest comes back in ``encoding.overflowing``."""
    copy = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length, stride=stride, strategy=strategy)
    return copy


def pad_inputs(features: Sequence[dict], pad_id: int, token_types: bool = True) -> dict:
    """The model inputs of a list of features: ``input_ids``, ``attention_mask`` and (for
    encoders) ``token_type_ids``, right-padded to the longest. Each (B, L)."""
    ids, mask = pad_rows([f["input_ids"] for f in features], pad_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        batch["token_type_ids"] = pad_rows([f["token_type_ids"] for f in features], 0)[0]
    return batch


def label_order(values: set[str]) -> list[str]:
    """Labels sorted: numerically when they all are integers, else as strings."""
    try:
        return sorted(values, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(values)


class Task:
    """The interface of a fine-tuning task (see the module docstring). Subclasses set
    ``kind`` and override what differs."""

    kind = ""

    def __init__(
        self, cfg: TaskSection, tokenizer: tokenizers.Tokenizer, body_config: ModelConfig
    ) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.body_config = body_config
        self.specials = SpecialTokens.from_tokenizer(tokenizer)
        self.max_length = fit_length(cfg.max_length, body_config)
        pad_id = self.specials.pad_id
        if pad_id is None:
            pad_id = self.specials.eos_id if self.specials.eos_id is not None else 0
        self.pad_id = pad_id
        self.init_std = body_config.init_std
        self.dropout = cfg.head_dropout if cfg.head_dropout is not None else body_config.dropout
        self.sampler: Sampler | None = None  # set while encoding an epoch's training texts
        self._framing: Framing | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self, rows: list[Row]) -> None:
        """Learn what the training rows imply (the label set, say)."""

    def state(self) -> dict[str, Any]:
        """What :meth:`setup` learned, as JSON (saved with the fine-tuned model)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""

    def prepare_body(self, body: TransformerModel) -> None:
        """Adapt the body before training (GPT tasks add special tokens); check it fits."""

    def build_head(self, body: TransformerModel) -> nn.Module:
        raise NotImplementedError

    @property
    def labels(self) -> list[str] | None:
        """The label names, where the task has classes."""
        return None

    # -- data ----------------------------------------------------------------------------
    def encode(self, rows: list[Row], training: bool) -> list[Feature]:
        """Features of ``rows``; each has ``row`` (the index of its row). Without targets
        (``training=False`` and a file with no labels) the target fields may be absent."""
        raise NotImplementedError

    def train_features(self, rows: list[Row], seed: int, epoch: int) -> list[Feature]:
        """The training features of one epoch: with ``task.subword_sampling`` the texts are
        tokenized afresh by a sampler seeded with ``(seed, epoch)``; otherwise as
        :meth:`encode` always does."""
        spec = self.cfg.subword_sampling
        if spec is None:
            return self.encode(rows, training=True)
        self.sampler = epoch_sampler(self.tokenizer, spec, seed, epoch)
        try:
            return self.encode(rows, training=True)
        finally:
            self.sampler = None

    @property
    def samples_subwords(self) -> bool:
        """Whether training features differ from epoch to epoch."""
        return self.cfg.subword_sampling is not None

    def plain_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts`` without special tokens: sampled while an epoch's training
        texts are encoded, the tokenizer's own segmentation otherwise."""
        if self.sampler is not None:
            return self.sampler.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    @property
    def framing(self) -> Framing:
        """The tokenizer's special tokens around one text or a pair."""
        if self._framing is None:
            self._framing = Framing(self.tokenizer)
        return self._framing

    def collate(self, features: list[Feature]) -> Batch:
        raise NotImplementedError

    @property
    def target_column(self) -> str:
        """The column that holds what the task learns to predict."""
        return self.cfg.label

    def has_targets(self, rows: list[Row]) -> bool:
        """Whether ``rows`` carry what :meth:`references` and :meth:`loss` need."""
        return bool(rows) and rows[0].has(self.target_column)

    def check_targets(self, rows: list[Row], what: str) -> None:
        """Refuse ``rows`` of a file that must be scored (``what``: "validation") but holds
        no targets: the run would train to its end with nothing to choose its best by."""
        if rows and not self.has_targets(rows):
            raise rows[0].error(
                f"the {what} file has no {self.target_column!r} column (or it is empty): "
                f"the {self.kind} task scores the {what} rows by it"
            )

    def input_row(self, item: Any) -> dict[str, Any]:
        """A row (column -> value) from a :meth:`Finetuned.predict` input."""
        if isinstance(item, dict):
            return item
        return {self.cfg.text: item}

    # -- model ---------------------------------------------------------------------------
    def counts(self, batch: Batch) -> Counts:
        """What each term of the loss averages over in ``batch`` (from the batch alone, no
        forward): the trainer sums them over a step's micro-batches and processes."""
        raise NotImplementedError

    def loss(
        self, model: FinetuneModel, batch: Batch, totals: Counts | None = None
    ) -> torch.Tensor:
        """The training loss of ``batch``: its mean, or with ``totals`` (the step's
        :meth:`counts`) its share of the step's loss
        (:func:`~triform.nn.losses.loss_share`)."""
        raise NotImplementedError

    def outputs(self, model: FinetuneModel, batch: Batch) -> list[Any]:
        """What :meth:`decode` needs, one item per feature of the batch (on the CPU)."""
        raise NotImplementedError

    def decode(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[Any]:
        """One prediction per row."""
        raise NotImplementedError

    def references(self, rows: list[Row]) -> list[Any]:
        raise NotImplementedError

    def metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        raise NotImplementedError

    def show(self, prediction: Any) -> Any:
        """A prediction as JSON-friendly data (label names rather than indices)."""
        return prediction

    def details(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[dict]:
        """One JSON-friendly dict per row: ``prediction`` (as :meth:`show` gives it) and,
        where the task has them, its scores."""
        return [{"prediction": self.show(p)} for p in self.decode(outputs, features, rows)]


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def run_model(
    task: Task,
    model: FinetuneModel,
    rows: list[Row],
    batch_size: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    with_loss: bool = False,
    progress: bool = False,
) -> tuple[list[Any], list[Feature], float]:
    """The task's outputs for the features of ``rows`` (batched, eval mode), the features,
    and the mean loss (NaN unless ``with_loss``). ``progress``: a bar on stderr."""
    was_training = model.training
    model.eval()
    features = task.encode(rows, training=False)
    outputs: list[Any] = []
    loss_sum, count = 0.0, 0
    starts = range(0, len(features), batch_size)
    bar = tqdm(
        total=len(features), unit="ex", file=sys.stderr, disable=not progress, dynamic_ncols=True
    )
    try:
        for start in starts:
            chunk = features[start : start + batch_size]
            batch = to_device(task.collate(chunk), device)
            with autocast_context(precision, device):
                if with_loss:
                    loss_sum += float(task.loss(model, batch)) * len(chunk)
                    count += len(chunk)
                outputs.extend(task.outputs(model, batch))
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return outputs, features, (loss_sum / count if count else math.nan)


def evaluate(
    task: Task,
    model: FinetuneModel,
    rows: list[Row],
    batch_size: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    score: bool = True,
) -> tuple[dict[str, float], list[Any]]:
    """Metrics (with the mean ``loss``) and per-row predictions of ``model`` on ``rows``.
    Rows without targets, or ``score=False``, give predictions only (empty metrics)."""
    targets = score and task.has_targets(rows)
    outputs, features, loss = run_model(task, model, rows, batch_size, device, precision, targets)
    predictions = task.decode(outputs, features, rows)
    if not targets:
        return {}, predictions
    metrics = task.metrics(predictions, task.references(rows))
    metrics["loss"] = loss
    return metrics, predictions


def check_form(task: Task, body: TransformerModel, forms: tuple[str, ...]) -> None:
    """Refuse a body of a form the task cannot use."""
    if body.config.form not in forms:
        raise TriformError(
            f"task {task.kind} needs a {' or '.join(forms)} model, but the body is an "
            f"{body.config.form} model ({body.config.family})"
        )
