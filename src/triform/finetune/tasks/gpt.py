"""GPT-1 fine-tuning (Radford et al., 2018, section 3.3): task input transformations and the
auxiliary language-modelling loss, on a decoder-only body.

Structured inputs become token sequences framed by three learned tokens, ``start``,
``delim`` and ``extract`` (added to the tokenizer and the embedding table when missing);
a linear layer reads the last layer's state at the ``extract`` token:

==================  ==================================================================
classification      ``start text extract``
entailment          ``start premise delim hypothesis extract``
similarity          ``start A delim B extract`` and ``start B delim A extract``; the two
                    states are added element-wise before the linear layer
multiple choice     ``start context delim answer_k extract`` for every option; one score
                    each, softmax over the options
==================  ==================================================================

The loss is ``L = L_task + lm_weight * L_LM`` (``lm_weight`` = lambda, 0.5 by default), with
``L_LM`` the next-token loss over the real tokens of every input sequence.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import AddedToken
from torch import nn

from triform.finetune.body import resize_token_embeddings, select
from triform.finetune.data import Row
from triform.finetune.heads import SequenceHead
from triform.finetune.metrics import choice_metrics, classification_metrics, regression_metrics
from triform.finetune.subwords import truncate_pair
from triform.finetune.tasks.base import (
    Batch,
    Feature,
    FinetuneModel,
    check_form,
)
from triform.finetune.tasks.classification import LabelledTask, LabelSet
from triform.models import TransformerModel
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share

START, DELIM, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"


def ensure_special_tokens(tokenizer: Any) -> tuple[int, int, int]:
    """The ids of ``start``, ``delim`` and ``extract``, added to ``tokenizer`` (in place) as
    special tokens where missing."""
    missing = [t for t in (START, DELIM, EXTRACT) if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in missing])
    return (
        tokenizer.token_to_id(START),
        tokenizer.token_to_id(DELIM),
        tokenizer.token_to_id(EXTRACT),
    )


def gpt_layout(
    a: list[int], b: list[int] | None, ids: tuple[int, int, int], max_length: int
) -> list[int]:
    """``start a extract`` or ``start a delim b extract``, the texts cut longest-first so
    that the whole sequence fits ``max_length``."""
    start, delim, extract = ids
    if b is None:
        return [start, *a[: max_length - 2], extract]
    a, b = truncate_pair(a, b, max_length - 3)
    return [start, *a, delim, *b, extract]


class GPTTask(LabelledTask):
    """The four GPT-1 task kinds; ``kind`` picks the input transformation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token_ids = ensure_special_tokens(self.tokenizer)
        self.label_set: LabelSet | None = None
        self.regression = self.kind == "gpt-similarity" and self.cfg.regression
        self.choices = self.kind == "gpt-multiple-choice"

    # -- lifecycle -----------------------------------------------------------------------
    def has_classes(self) -> bool:
        return not (self.regression or self.choices)

    def prepare_body(self, body: TransformerModel) -> None:
        """A decoder, with room in its tables for the three new tokens."""
        check_form(self, body, ("decoder",))
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if size > body.config.vocab_size:
            resize_token_embeddings(body, size)

    def build_head(self, body: TransformerModel) -> nn.Module:
        outputs = 1 if self.regression or self.choices else len(self.labels or [])
        hidden = body.config.hidden_size
        return SequenceHead(hidden, outputs, self.dropout, transform=False, std=self.init_std)

    # -- data ----------------------------------------------------------------------------
    def pieces(self, rows: list[Row]) -> list[tuple[list[str], ...]]:
        """The texts each row's sequences are built from: (text,), (a, b) or (context,
        choices)."""
        cfg = self.cfg
        if self.kind == "gpt-classification":
            return [([row.text(cfg.text)],) for row in rows]
        if self.choices:
            return [([row.text(cfg.text)], row.strings(cfg.choices)) for row in rows]
        return [([row.text(cfg.text)], [row.text(cfg.text_pair)]) for row in rows]

    def sequences(self, row_pieces: tuple[list[str], ...]) -> list[list[int]]:
        """The token sequences of one row (1, 2, or one per choice)."""
        texts = [t for part in row_pieces for t in part]
        ids = self.plain_ids(texts)
        first, rest = ids[0], ids[1:]
        if self.kind == "gpt-classification":
            return [gpt_layout(first, None, self.token_ids, self.max_length)]
        if self.kind == "gpt-similarity":
            (second,) = rest
            return [
                gpt_layout(first, second, self.token_ids, self.max_length),
                gpt_layout(second, first, self.token_ids, self.max_length),
            ]
        return [gpt_layout(first, other, self.token_ids, self.max_length) for other in rest]

    def target(self, row: Row) -> int | float:
        if self.regression:
            return row.number(self.cfg.label)
        if self.choices:
            index = row.integer(self.cfg.label)
            if not 0 <= index < len(row.strings(self.cfg.choices)):
                raise row.error(f"label {index} is not the index of a choice")
            return index
        return self.label_set.of(row, self.cfg.label)  # type: ignore[union-attr]

    def encode(self, rows: list[Row], training: bool) -> list[Feature]:
        targets = training or self.has_targets(rows)
        features = []
        for i, (row, parts) in enumerate(zip(rows, self.pieces(rows), strict=True)):
            if self.choices and not parts[1]:
                raise row.error(f"column {self.cfg.choices!r} has no choices")
            feature: Feature = {"row": i, "sequences": self.sequences(parts)}
            if targets:
                feature["label"] = self.target(row)
            features.append(feature)
        return features

    def collate(self, features: list[Feature]) -> Batch:
        """``input_ids`` (B, K, L) with K sequences per example (a missing choice repeats
        the first, masked out by ``choice_mask`` (B, K) and by ``lm_labels``)."""
        count = max(len(f["sequences"]) for f in features)
        length = max(len(s) for f in features for s in f["sequences"])
        ids = torch.full((len(features), count, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        lm_labels = torch.full_like(ids, IGNORE_INDEX)
        choice_mask = torch.zeros((len(features), count), dtype=torch.bool)
        for b, feature in enumerate(features):
            sequences = feature["sequences"]
            for k in range(count):
                seq = torch.as_tensor(sequences[k] if k < len(sequences) else sequences[0])
                ids[b, k, : len(seq)] = seq
                mask[b, k, : len(seq)] = 1
                if k < len(sequences):
                    lm_labels[b, k, : len(seq)] = seq
                    choice_mask[b, k] = True
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "lm_labels": lm_labels,
            "choice_mask": choice_mask,
        }
        if "label" in features[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([f["label"] for f in features], dtype=dtype)
        return batch

    def input_row(self, item: Any) -> dict[str, Any]:
        if isinstance(item, dict):
            return item
        if self.kind == "gpt-classification":
            return {self.cfg.text: item}
        first, second = item
        other = self.cfg.choices if self.choices else self.cfg.text_pair
        return {self.cfg.text: first, other: second}

    # -- model ---------------------------------------------------------------------------
    def forward(self, model: FinetuneModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Task scores — (B, labels), (B,) for regression, (B, K) for choices — and the LM
        loss over the real tokens of every sequence (0 when ``lm_weight`` is 0)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        b, k, length = ids.shape
        flat_ids, flat_mask = ids.view(b * k, length), mask.view(b * k, length)
        with_lm = self.cfg.lm_weight > 0
        out = model.body(flat_ids, flat_mask, compute_logits=with_lm)
        extract = select(out.last_hidden_state, flat_mask, "last").view(b, k, -1)  # (B, K, H)
        if self.choices:
            scores = model.head(extract).squeeze(-1).float()  # (B, K)
            scores = scores.masked_fill(~batch["choice_mask"], -1e4)
        elif self.kind == "gpt-similarity":
            scores = model.head(extract[:, 0] + extract[:, 1]).float()
        else:
            scores = model.head(extract[:, 0]).float()
        if self.regression:
            scores = scores.squeeze(-1)
        lm = scores.new_zeros(())
        if with_lm:
            logits = out.logits[:, :-1].float()  # (B*K, L-1, V) predicts tokens 1..L-1
            targets = batch["lm_labels"].view(b * k, length)[:, 1:]
            lm = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return scores, lm

    def counts(self, batch: Batch) -> Counts:
        """The rows (the task term) and the tokens the auxiliary LM term predicts."""
        b, k, length = batch["input_ids"].shape
        lm_tokens = labelled(batch["lm_labels"].view(b * k, length)[:, 1:])
        return {"rows": self.label_count(batch["labels"]), "lm_tokens": lm_tokens}

    def loss(
        self, model: FinetuneModel, batch: Batch, totals: Counts | None = None
    ) -> torch.Tensor:
        scores, lm = self.forward(model, batch)
        counts = self.counts(batch) if totals is not None else {}
        task = loss_share(self.task_loss(scores, batch["labels"]), "rows", counts, totals)
        return task + self.cfg.lm_weight * loss_share(lm, "lm_tokens", counts, totals)

    def outputs(self, model: FinetuneModel, batch: Batch) -> list[Any]:
        scores, _ = self.forward(model, batch)
        return list(scores.cpu())

    def metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        if self.regression:
            return regression_metrics(predictions, references)
        if self.choices:
            return choice_metrics(predictions, references)
        return classification_metrics(predictions, references, len(self.labels or []))

    def show(self, prediction: Any) -> Any:
        if self.regression or self.choices:
            return prediction
        return self.labels[prediction]  # type: ignore[index]


class GPTClassification(GPTTask):
    kind = "gpt-classification"


class GPTEntailment(GPTTask):
    kind = "gpt-entailment"


class GPTSimilarity(GPTTask):
    kind = "gpt-similarity"


class GPTMultipleChoice(GPTTask):
    kind = "gpt-multiple-choice"
