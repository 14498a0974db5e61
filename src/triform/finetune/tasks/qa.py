"""Extractive question answering (SQuAD style): find the answer's span in the context.

A (question, context) pair longer than ``max_length`` is cut into several windows, each
the question plus a slice of the context, consecutive slices sharing ``stride`` tokens (the
tokenizer's overflow, as HuggingFace's SQuAD scripts do it). A window is trained to point at
the answer's first and last token when it holds the whole answer, else at position 0 (the
``[CLS]`` slot: "not in this window"). To predict, the best-scoring span (start + end score,
at most ``max_answer_length`` tokens, inside the context) over all windows of an example is
mapped back to characters with the tokenizer's offsets. Scored by SQuAD exact match / F1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from triform.errors import TriformError
from triform.finetune.body import token_states
from triform.finetune.data import Row
from triform.finetune.heads import SpanHead
from triform.finetune.metrics import squad_metrics
from triform.finetune.tasks.base import (
    Batch,
    Feature,
    FinetuneModel,
    Task,
    pad_inputs,
    truncating,
)
from triform.models import TransformerModel
from triform.nn.losses import Counts, labelled, loss_share

Offsets = list[tuple[int, int] | None]  # per token: its characters in the context, or None
N_BEST = 20


def context_offsets(sequence_ids: list[int | None], offsets: list[tuple[int, int]]) -> Offsets:
    """The character span of every context token of a window; None for the others."""
    return [tuple(o) if s == 1 else None for s, o in zip(sequence_ids, offsets, strict=True)]


def span_positions(offsets: Offsets, start_char: int, end_char: int) -> tuple[int, int] | None:
    """First and last token of the characters ``[start_char, end_char)`` in a window, or
    None when the window does not hold the whole span."""
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside:
        return None
    first, last = inside[0], inside[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None
    start = first
    while start < last and offsets[start][1] <= start_char:
        start += 1
    end = last
    while end > start and offsets[end][0] >= end_char:
        end -= 1
    return start, end


def best_span(
    windows: list[tuple[list[float], list[float], Offsets]], context: str, max_tokens: int
) -> dict[str, Any]:
    """The highest-scoring answer over an example's windows (by start + end score):
    ``answer`` text, ``start`` / ``end`` characters in the context and ``score``, the
    probability of the span within its window (softmax of the start scores times softmax of
    the end scores)."""
    best: dict[str, Any] = {"answer": "", "start": None, "end": None, "score": 0.0}
    best_logit = -math.inf
    for start_logits, end_logits, offsets in windows:
        inside = [i for i, o in enumerate(offsets) if o is not None]
        starts = sorted(inside, key=lambda i: -start_logits[i])[:N_BEST]
        ends = sorted(inside, key=lambda i: -end_logits[i])[:N_BEST]
        # log of the window's softmax normalisers, start and end
        norm = float(
            torch.tensor(start_logits).logsumexp(0) + torch.tensor(end_logits).logsumexp(0)
        )
        for s in starts:
            for e in ends:
                if not s <= e < s + max_tokens:
                    continue
                logit = start_logits[s] + end_logits[e]
                if logit > best_logit:
                    best_logit = logit
                    first, last = offsets[s][0], offsets[e][1]  # type: ignore[index]
                    best = {
                        "answer": context[first:last],
                        "start": first,
                        "end": last,
                        "score": math.exp(logit - norm),
                    }
    return best


class ExtractiveQA(Task):
    kind = "qa"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stride = self.cfg.stride if self.cfg.stride is not None else self.max_length // 4
        self.stride = stride
        self.cut = truncating(self.tokenizer, self.max_length, stride, "only_second")

    def build_head(self, body: TransformerModel) -> nn.Module:
        return SpanHead(body.config.hidden_size, self.init_std)

    # -- data ----------------------------------------------------------------------------
    @property
    def target_column(self) -> str:
        return self.cfg.answer_text

    def answers(self, row: Row) -> list[str]:
        """The gold answer texts of a row (a text or a list of texts)."""
        value = row.get(self.cfg.answer_text)
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    def char_span(self, row: Row, context: str) -> tuple[int, int] | None:
        """The first answer's characters in the context (None: no answer)."""
        text = self.answers(row)[0] if self.answers(row) else ""
        if not text:
            return None
        start = None
        if row.has(self.cfg.answer_start):
            value = row.get(self.cfg.answer_start)
            start = int(value[0] if isinstance(value, list) else row.integer(self.cfg.answer_start))
        if start is None or context[start : start + len(text)] != text:
            found = context.find(text)
            if found < 0:
                raise row.error(f"answer {text!r} is not in the context")
            start = found
        return start, start + len(text)

    def encode(self, rows: list[Row], training: bool) -> list[Feature]:
        pairs = [(row.text(self.cfg.question), row.text(self.cfg.context)) for row in rows]
        try:
            encodings = self.cut.encode_batch(pairs)
        except Exception as err:  # the Rust side: a question too long to leave room
            for row, pair in zip(rows, pairs, strict=True):
                try:
                    self.cut.encode(*pair)
                except Exception:
                    raise row.error(
                        f"the question leaves no room for the context in max_length "
                        f"{self.max_length} with stride {self.stride}"
                    ) from None
            raise TriformError(f"qa: cannot encode the examples: {err}") from None
        targets = training or self.has_targets(rows)
        features = []
        for i, (row, encoding) in enumerate(zip(rows, encodings, strict=True)):
            span = self.char_span(row, pairs[i][1]) if targets else None
            for window in [encoding, *encoding.overflowing]:
                offsets = context_offsets(window.sequence_ids, window.offsets)
                feature: Feature = {
                    "row": i,
                    "input_ids": window.ids,
                    "token_type_ids": window.type_ids,
                    "offsets": offsets,
                }
                if targets:
                    found = span_positions(offsets, *span) if span is not None else None
                    feature["start"], feature["end"] = found if found is not None else (0, 0)
                features.append(feature)
        return features

    def collate(self, features: list[Feature]) -> Batch:
        batch = pad_inputs(features, self.pad_id)
        if "start" in features[0]:
            batch["start"] = torch.tensor([f["start"] for f in features])
            batch["end"] = torch.tensor([f["end"] for f in features])
        return batch

    def input_row(self, item: Any) -> dict[str, Any]:
        if isinstance(item, dict):
            return item
        question, context = item
        return {self.cfg.question: question, self.cfg.context: context}

    # -- model ---------------------------------------------------------------------------
    def logits(self, model: FinetuneModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end scores (B, L); padding gets a large negative score."""
        start, end = model.head(token_states(model.body, batch))
        padding = batch["attention_mask"] == 0
        return start.float().masked_fill(padding, -1e4), end.float().masked_fill(padding, -1e4)

    def counts(self, batch: Batch) -> Counts:
        return {"rows": labelled(batch["start"])}

    def loss(
        self, model: FinetuneModel, batch: Batch, totals: Counts | None = None
    ) -> torch.Tensor:
        start, end = self.logits(model, batch)
        loss = (F.cross_entropy(start, batch["start"]) + F.cross_entropy(end, batch["end"])) / 2
        return loss_share(loss, "rows", self.counts(batch), totals)

    def outputs(self, model: FinetuneModel, batch: Batch) -> list[Any]:
        start, end = self.logits(model, batch)
        return list(zip(start.cpu().tolist(), end.cpu().tolist(), strict=True))

    def decode(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[Any]:
        return [d["prediction"] for d in self.details(outputs, features, rows)]

    def details(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[dict]:
        """Per row: the answer text, its characters in the context and its probability."""
        windows: list[list[tuple[list[float], list[float], Offsets]]] = [[] for _ in rows]
        for (start, end), feature in zip(outputs, features, strict=True):
            windows[feature["row"]].append((start, end, feature["offsets"]))
        found = []
        for w, row in zip(windows, rows, strict=True):
            span = best_span(w, row.text(self.cfg.context), self.cfg.max_answer_length)
            found.append({"prediction": span.pop("answer"), **span})
        return found

    def references(self, rows: list[Row]) -> list[Any]:
        return [self.answers(row) for row in rows]

    def metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return squad_metrics(predictions, references)
