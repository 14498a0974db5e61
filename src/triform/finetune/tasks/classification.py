"""Sequence classification and regression on one text or a pair of texts.

Input: ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` (or the family's own framing), cut to
``max_length`` longest-first. Representation: the first token (through BERT's pretrained
pooler when the body has one), the last real token for decoders, BART's last decoder state
for encoder-decoders (see :func:`triform.finetune.body.pooled_states`). Head: a linear layer
(with RoBERTa/BART's dense + tanh before it where the body has no pooler). Loss: cross
entropy over the labels, or mean squared error for ``regression``.
"""

from __future__ import annotations

import collections
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from triform.errors import TriformError
from triform.finetune.body import pooled_states, uses_pooler
from triform.finetune.data import Row
from triform.finetune.heads import SequenceHead
from triform.finetune.metrics import classification_metrics, regression_metrics
from triform.finetune.subwords import truncate_pair
from triform.finetune.tasks.base import (
    Batch,
    Feature,
    FinetuneModel,
    Task,
    label_order,
    pad_inputs,
    truncating,
)
from triform.models import DecoderModel, TransformerModel
from triform.nn.losses import Counts, loss_share


class LabelSet:
    """Label names <-> indices, with errors that name the row of an unknown label."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)}

    @staticmethod
    def value(row: Row, column: str) -> str:
        """The label of ``row``; an empty cell is an error naming the row."""
        value = row.text(column)
        if not value.strip():
            raise row.error(f"empty label in column {column!r}")
        return value

    @classmethod
    def infer(cls, rows: list[Row], column: str) -> LabelSet:
        values = {cls.value(row, column) for row in rows}
        if len(values) < 2:
            raise TriformError(f"the training data has a single label {values}; need at least 2")
        return cls(label_order(values))

    def of(self, row: Row, column: str) -> int:
        value = self.value(row, column)
        if value not in self.index:
            raise row.error(f"unknown label {value!r} (labels: {', '.join(self.names)})")
        return self.index[value]


class LabelledTask(Task):
    """A task whose targets are named classes: the label set comes from ``[task] labels``
    or from the training data, and is saved with the model."""

    label_set: LabelSet | None = None
    regression = False  # set by instances that predict a number instead of a class
    class_weights: list[float] | None = None  # the loss weight of each class

    def has_classes(self) -> bool:
        """False where this instance predicts a number or a choice instead."""
        return True

    def setup(self, rows: list[Row]) -> None:
        if not self.has_classes():
            return
        if self.cfg.labels is not None:
            self.label_set = LabelSet(self.cfg.labels)
        else:
            self.label_set = LabelSet.infer(rows, self.cfg.label)
        self.class_weights = self._class_weights(rows)

    def _class_weights(self, rows: list[Row]) -> list[float] | None:
        """``task.class_weights``: ``"balanced"`` gives class ``c`` the weight
        ``n / (classes * count_c)`` over the training rows (scikit-learn's rule)."""
        spec, names = self.cfg.class_weights, self.labels or []
        if spec is None:
            return None
        if spec == "balanced":
            counts = collections.Counter(int(self.target(row)) for row in rows)
            return [
                len(rows) / (len(names) * counts[c]) if counts[c] else 0.0
                for c in range(len(names))
            ]
        if len(spec) != len(names):
            raise TriformError(
                f"task.class_weights has {len(spec)} weights for {len(names)} labels "
                f"({', '.join(names)})"
            )
        return [float(w) for w in spec]

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels, "class_weights": self.class_weights}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("labels") is not None:
            self.label_set = LabelSet(state["labels"])
        self.class_weights = state.get("class_weights")

    @property
    def labels(self) -> list[str] | None:
        return self.label_set.names if self.label_set is not None else None

    def target(self, row: Row) -> int | float:
        raise NotImplementedError

    def label_count(self, labels: torch.Tensor) -> torch.Tensor:
        """What :meth:`task_loss` averages over: the rows, or with class weights the sum of
        their weights (as ``F.cross_entropy(weight=...)`` does)."""
        if self.regression or self.class_weights is None:
            return torch.tensor(labels.shape[0], device=labels.device)
        weight = torch.tensor(self.class_weights, dtype=torch.float64, device=labels.device)
        return weight[labels].sum()

    def task_loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean squared error for a number, cross entropy over the classes otherwise."""
        if self.regression:
            return F.mse_loss(scores, labels)
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, dtype=scores.dtype, device=scores.device)
        return F.cross_entropy(scores, labels, weight=weight)

    def decode(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[Any]:
        if self.regression:
            return [float(o) for o in outputs]
        return [int(o.argmax()) for o in outputs]

    def references(self, rows: list[Row]) -> list[Any]:
        return [self.target(row) for row in rows]

    def details(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[dict]:
        """A value (regression); the best choice and each choice's probability (multiple
        choice); or the label, its probability and every label's probability."""
        if self.regression:
            return [{"prediction": float(o)} for o in outputs]
        found = []
        for scores, feature in zip(outputs, features, strict=True):
            probs = torch.softmax(scores.float(), -1).tolist()
            if self.labels is None:  # multiple choice: the row's own choices only
                probs = probs[: len(feature["sequences"])]
            best = max(range(len(probs)), key=probs.__getitem__)
            if self.labels is None:  # choices
                found.append({"prediction": best, "score": probs[best], "probabilities": probs})
            else:
                named = dict(zip(self.labels, probs, strict=True))
                found.append(
                    {"prediction": self.labels[best], "score": probs[best], "probabilities": named}
                )
        return found


class SequenceClassification(LabelledTask):
    """``classification`` (one text), ``pair-classification`` (two texts) and
    ``regression`` (one or two texts -> a number)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_set: LabelSet | None = None
        self.regression = self.kind == "regression"
        self.cut = truncating(self.tokenizer, self.max_length)
        # Tokenizers that frame nothing (GPT-2's) get a separator between pair texts.
        self.needs_separator = self.tokenizer.num_special_tokens_to_add(True) == 0
        sep = self.specials.sep_id if self.specials.sep_id is not None else self.specials.eos_id
        self.separator = sep

    # -- lifecycle -----------------------------------------------------------------------
    def has_classes(self) -> bool:
        return not self.regression

    @property
    def num_outputs(self) -> int:
        return 1 if self.regression else len(self.label_set.names)  # type: ignore[union-attr]

    def build_head(self, body: TransformerModel) -> nn.Module:
        transform = not uses_pooler(body, self.cfg.pooling) and not isinstance(body, DecoderModel)
        hidden = body.config.hidden_size
        activation = "gelu" if body.config.family == "electra" else "tanh"  # as the papers
        return SequenceHead(
            hidden, self.num_outputs, self.dropout, transform, self.init_std, activation
        )

    # -- data ----------------------------------------------------------------------------
    def _pair(self, rows: list[Row]) -> bool:
        if self.kind == "pair-classification":
            return True
        return self.regression and bool(rows) and rows[0].has(self.cfg.text_pair)

    def encode(self, rows: list[Row], training: bool) -> list[Feature]:
        pair = self._pair(rows)
        texts = [row.text(self.cfg.text) for row in rows]
        seconds = [row.text(self.cfg.text_pair) for row in rows] if pair else None
        ids, types = self.encode_texts(texts, seconds)
        targets = training or self.has_targets(rows)
        features = []
        for i, row in enumerate(rows):
            feature: Feature = {"row": i, "input_ids": ids[i], "token_type_ids": types[i]}
            if targets:
                feature["label"] = self.target(row)
            features.append(feature)
        return features

    def encode_texts(
        self, texts: list[str], seconds: list[str] | None
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and type ids of single texts or pairs, framed and cut."""
        separate = seconds is not None and self.needs_separator and self.separator is not None
        if self.sampler is None and not separate:
            inputs = list(zip(texts, seconds, strict=True)) if seconds is not None else texts
            encodings = self.cut.encode_batch(inputs)
            return [e.ids for e in encodings], [e.type_ids for e in encodings]
        plain = self.plain_ids(texts + (seconds or []))
        firsts, rest = plain[: len(texts)], plain[len(texts) :]
        ids, types = [], []
        for i, a in enumerate(firsts):
            if seconds is None:
                one, kinds = self.framing.frame(a, None, self.max_length)
            elif separate:
                first, second = truncate_pair(a, rest[i], self.max_length - 1)
                one = [*first, self.separator, *second]
                kinds = [0] * (len(first) + 1) + [1] * len(second)
            else:
                one, kinds = self.framing.frame(a, rest[i], self.max_length)
            ids.append(one)
            types.append(kinds)
        return ids, types

    def target(self, row: Row) -> int | float:
        if self.regression:
            return row.number(self.cfg.label)
        return self.label_set.of(row, self.cfg.label)  # type: ignore[union-attr]

    def collate(self, features: list[Feature]) -> Batch:
        batch = pad_inputs(features, self.pad_id)
        if "label" in features[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([f["label"] for f in features], dtype=dtype)
        return batch

    def input_row(self, item: Any) -> dict[str, Any]:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return {self.cfg.text: item[0], self.cfg.text_pair: item[1]}
        return super().input_row(item)

    # -- model ---------------------------------------------------------------------------
    def logits(self, model: FinetuneModel, batch: Batch) -> torch.Tensor:
        """(B, labels), or (B,) for regression."""
        scores = model.head(pooled_states(model.body, batch, self.cfg.pooling))
        return scores.squeeze(-1) if self.regression else scores

    def counts(self, batch: Batch) -> Counts:
        return {"rows": self.label_count(batch["labels"])}

    def loss(
        self, model: FinetuneModel, batch: Batch, totals: Counts | None = None
    ) -> torch.Tensor:
        loss = self.task_loss(self.logits(model, batch).float(), batch["labels"])
        return loss_share(loss, "rows", self.counts(batch), totals)

    def outputs(self, model: FinetuneModel, batch: Batch) -> list[Any]:
        return list(self.logits(model, batch).float().cpu())

    def metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        if self.regression:
            return regression_metrics(predictions, references)
        return classification_metrics(predictions, references, self.num_outputs)

    def show(self, prediction: Any) -> Any:
        return prediction if self.regression else self.labels[prediction]  # type: ignore[index]


class Classification(SequenceClassification):
    kind = "classification"


class PairClassification(SequenceClassification):
    kind = "pair-classification"


class Regression(SequenceClassification):
    kind = "regression"
