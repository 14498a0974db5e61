"""Token classification (tagging, e.g. named entities) with sub-word -> word alignment.

Rows give words (``tokens``) and one tag per word (``tags``). Words are tokenized as
pre-split input; the first sub-token of each word carries the word's tag and every other
sub-token, and the special tokens, get -100 (ignored by the loss). A word's prediction is
the one at its first sub-token; words cut off by ``max_length`` are predicted ``O``. Scored
at the entity level (seqeval) and by word accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from triform.errors import TriformError
from triform.finetune.body import token_states
from triform.finetune.data import Row
from triform.finetune.heads import TokenHead
from triform.finetune.metrics import entity_metrics
from triform.finetune.tasks.base import (
    Batch,
    Feature,
    FinetuneModel,
    Task,
    pad,
    pad_inputs,
    truncating,
)
from triform.models import TransformerModel

IGNORE = -100


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per-token targets: the first sub-token of word ``w`` gets ``word_labels[w]``; later
    sub-tokens of the same word and special tokens (``None``) get -100."""
    targets, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            targets.append(IGNORE)
        else:
            targets.append(word_labels[word])
        previous = word
    return targets


def first_subtokens(word_ids: list[int | None]) -> dict[int, int]:
    """Word index -> position of its first sub-token."""
    first: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = position
    return first


class Tagging(Task):
    kind = "tagging"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names: list[str] | None = None
        self.cut = truncating(self.tokenizer, self.max_length)

    def setup(self, rows: list[Row]) -> None:
        if self.cfg.labels is not None:
            self.names = list(self.cfg.labels)
            return
        tags = {tag for row in rows for tag in row.strings(self.cfg.tags)}
        if len(tags) < 2:
            raise TriformError(f"the training data has a single tag {tags}; need at least 2")
        self.names = sorted(tags, key=lambda t: (t != "O", t[2:], t))  # O, then by entity type

    def state(self) -> dict[str, Any]:
        return {"labels": self.names}

    def load_state(self, state: dict[str, Any]) -> None:
        self.names = state.get("labels")

    @property
    def labels(self) -> list[str] | None:
        return self.names

    @property
    def outside(self) -> str:
        """The tag of words without a prediction."""
        assert self.names is not None
        return "O" if "O" in self.names else self.names[0]

    def build_head(self, body: TransformerModel) -> nn.Module:
        assert self.names is not None
        size = body.config.hidden_size
        return TokenHead(size, len(self.names), self.dropout, self.init_std)

    # -- data ----------------------------------------------------------------------------
    def has_targets(self, rows: list[Row]) -> bool:
        return bool(rows) and rows[0].has(self.cfg.tags)

    def words(self, row: Row) -> list[str]:
        words = row.strings(self.cfg.tokens)
        if not words:
            raise row.error(f"column {self.cfg.tokens!r} has no words")
        return words

    def tag_ids(self, row: Row, count: int) -> list[int]:
        tags = row.strings(self.cfg.tags)
        if len(tags) != count:
            raise row.error(f"{count} words but {len(tags)} tags")
        index = {name: i for i, name in enumerate(self.names or [])}
        unknown = [t for t in tags if t not in index]
        if unknown:
            raise row.error(f"unknown tag {unknown[0]!r} (tags: {', '.join(index)})")
        return [index[t] for t in tags]

    def encode(self, rows: list[Row], training: bool) -> list[Feature]:
        words = [self.words(row) for row in rows]
        encodings = self.cut.encode_batch(words, is_pretokenized=True)
        targets = training or self.has_targets(rows)
        features = []
        for i, (row, encoding) in enumerate(zip(rows, encodings, strict=True)):
            word_ids = list(encoding.word_ids)
            feature: Feature = {
                "row": i,
                "input_ids": encoding.ids,
                "token_type_ids": encoding.type_ids,
                "word_ids": word_ids,
            }
            if targets:
                feature["labels"] = align_labels(word_ids, self.tag_ids(row, len(words[i])))
            features.append(feature)
        return features

    def collate(self, features: list[Feature]) -> Batch:
        batch = pad_inputs(features, self.pad_id)
        if "labels" in features[0]:
            batch["labels"] = pad([f["labels"] for f in features], IGNORE)
        return batch

    def input_row(self, item: Any) -> dict[str, Any]:
        if isinstance(item, dict):
            return item
        return {self.cfg.tokens: item.split() if isinstance(item, str) else list(item)}

    # -- model ---------------------------------------------------------------------------
    def logits(self, model: FinetuneModel, batch: Batch) -> torch.Tensor:
        return model.head(token_states(model.body, batch))  # (B, L, tags)

    def loss(self, model: FinetuneModel, batch: Batch) -> torch.Tensor:
        logits = self.logits(model, batch).float()
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def outputs(self, model: FinetuneModel, batch: Batch) -> list[Any]:
        return [row.tolist() for row in self.logits(model, batch).argmax(-1).cpu()]

    def decode(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[Any]:
        assert self.names is not None
        predictions = []
        for best, feature, row in zip(outputs, features, rows, strict=True):
            first = first_subtokens(feature["word_ids"])
            count = len(self.words(row))
            tags = [
                self.names[best[first[w]]] if w in first else self.outside for w in range(count)
            ]
            predictions.append(tags)
        return predictions

    def references(self, rows: list[Row]) -> list[Any]:
        return [row.strings(self.cfg.tags) for row in rows]

    def metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return entity_metrics(predictions, references)
