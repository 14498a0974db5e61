"""Token classification (tagging, e.g. named entities) with sub-word -> word alignment.

Rows give words (``tokens``) and one tag per word (``tags``). Words are tokenized as they
appear in running text (joined by spaces, then mapped back through the tokenizer's character
offsets), so every tokenizer kind sees them as in pretraining: byte-BPE's ``Ġgive`` and
SentencePiece's ``▁give`` after the first word, WordPiece's ``give`` / ``##s``. The first
sub-token of each word carries the word's tag and every other
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
    pad_inputs,
    truncating,
)
from triform.models import TransformerModel
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share
from triform.tensors import pad_rows


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per-token targets: the first sub-token of word ``w`` gets ``word_labels[w]``; later
    sub-tokens of the same word and special tokens (``None``) get -100."""
    targets, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            targets.append(IGNORE_INDEX)
        else:
            targets.append(word_labels[word])
        previous = word
    return targets


def running_text(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined by single spaces, and each word's characters ``[start, end)``."""
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), spans


def token_words(
    text: str,
    spans: list[tuple[int, int]],
    offsets: list[tuple[int, int]],
    special: list[int],
) -> list[int | None]:
    """The word of each token: the word of the first non-space character the token covers;
    a token of the space alone (``▁`` or ``Ġ`` split from its word) belongs to the word after
    it; special tokens belong to none."""
    owner = [-1] * len(text)  # the word of each character, the space before it included
    for index, (start, end) in enumerate(spans):
        owner[max(start - 1, 0) : end] = [index] * (end - max(start - 1, 0))
    words: list[int | None] = []
    for (start, end), is_special in zip(offsets, special, strict=True):
        # a token of the space alone may come with an empty span (byte-level BPE trims it)
        chars = range(start, min(max(end, start + 1), len(text))) if not is_special else ()
        found = [owner[c] for c in chars if owner[c] >= 0 and not text[c].isspace()]
        spaces = [owner[c] for c in chars if owner[c] >= 0]
        words.append(found[0] if found else spaces[0] if spaces else None)
    return words


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
    @property
    def target_column(self) -> str:
        return self.cfg.tags

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

    def tokenize(self, words: list[list[str]]) -> list[tuple[list[int], list[int], list]]:
        """Per row: token ids, type ids and the word of each token (None: special)."""
        if self.sampler is not None:
            return self.sampled(words)
        texts = [running_text(w) for w in words]
        encodings = self.cut.encode_batch([text for text, _ in texts])
        return [
            (e.ids, e.type_ids, token_words(text, spans, e.offsets, e.special_tokens_mask))
            for (text, spans), e in zip(texts, encodings, strict=True)
        ]

    def sampled(self, words: list[list[str]]) -> list[tuple[list[int], list[int], list]]:
        """:meth:`tokenize` with the epoch's subword sampler: each word sampled on its own,
        with the space before it as in running text (``" give"`` -> ``Ġgive`` / ``▁give``)."""
        pieces = [w if j == 0 else " " + w for row in words for j, w in enumerate(row)]
        sampled = iter(self.plain_ids(pieces))
        found = []
        for row in words:
            ids: list[int] = []
            owners: list[int] = []
            for j in range(len(row)):
                word_ids = next(sampled)
                ids += word_ids
                owners += [j] * len(word_ids)
            framed, types, positions = self.framing.frame_positions(ids, None, self.max_length)
            found.append((framed, types, [None if p is None else owners[p] for p in positions]))
        return found

    def encode(self, rows: list[Row], training: bool) -> list[Feature]:
        words = [self.words(row) for row in rows]
        targets = training or self.has_targets(rows)
        features = []
        for i, (row, (ids, types, word_ids)) in enumerate(
            zip(rows, self.tokenize(words), strict=True)
        ):
            feature: Feature = {
                "row": i,
                "input_ids": ids,
                "token_type_ids": types,
                "word_ids": word_ids,
            }
            if targets:
                feature["labels"] = align_labels(word_ids, self.tag_ids(row, len(words[i])))
            features.append(feature)
        return features

    def collate(self, features: list[Feature]) -> Batch:
        batch = pad_inputs(features, self.pad_id)
        if "labels" in features[0]:
            batch["labels"] = pad_rows([f["labels"] for f in features], IGNORE_INDEX)[0]
        return batch

    def input_row(self, item: Any) -> dict[str, Any]:
        if isinstance(item, dict):
            return item
        return {self.cfg.tokens: item.split() if isinstance(item, str) else list(item)}

    # -- model ---------------------------------------------------------------------------
    def logits(self, model: FinetuneModel, batch: Batch) -> torch.Tensor:
        return model.head(token_states(model.body, batch))  # (B, L, tags)

    def counts(self, batch: Batch) -> Counts:
        return {"tokens": labelled(batch["labels"])}

    def loss(
        self, model: FinetuneModel, batch: Batch, totals: Counts | None = None
    ) -> torch.Tensor:
        logits = self.logits(model, batch).float()
        loss = F.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX
        )
        return loss_share(loss, "tokens", self.counts(batch), totals)

    def outputs(self, model: FinetuneModel, batch: Batch) -> list[Any]:
        """Per sequence: the best tag of every token and its probability."""
        probs, best = self.logits(model, batch).float().softmax(-1).max(-1)  # (B, L) each
        return list(zip(best.cpu().tolist(), probs.cpu().tolist(), strict=True))

    def decode(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[Any]:
        return [d["prediction"] for d in self.details(outputs, features, rows)]

    def details(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[dict]:
        """Per row: the words, their tags and each tag's probability (``None`` for words cut
        off by ``max_length``, tagged as outside)."""
        assert self.names is not None
        found = []
        for (best, probs), feature, row in zip(outputs, features, rows, strict=True):
            first = first_subtokens(feature["word_ids"])
            words = self.words(row)
            at = [first.get(w) for w in range(len(words))]
            tags = [self.outside if p is None else self.names[best[p]] for p in at]
            scores = [None if p is None else probs[p] for p in at]
            found.append({"words": words, "prediction": tags, "scores": scores})
        return found

    def references(self, rows: list[Row]) -> list[Any]:
        return [row.strings(self.cfg.tags) for row in rows]

    def metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return entity_metrics(predictions, references)
