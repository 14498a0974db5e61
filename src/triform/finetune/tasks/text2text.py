"""Text-to-text fine-tuning of encoder-decoders (T5, BART): source text in, target text out.

Every source gets a task prefix (``"summarize: "``, ``"translate English to French: "``):
the row's own (the ``prefix`` column) or ``task_prefix``, so several tasks can share one
file and one batch. Targets are framed by the tokenizer (``... </s>``) and may be of any
length (``max_target_length`` cuts them; BART-style learned positions cap them). Training is
teacher-forced cross entropy: decoder inputs are the targets shifted right behind the
decoder start token. Evaluation decodes greedily and scores ROUGE / BLEU / exact match.

There is no new head: the pretrained LM head does the job, so ``optim.body_lr`` (default
``optim.lr``) applies to every parameter.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from triform.finetune.data import Row
from triform.finetune.metrics import generation_metrics
from triform.finetune.tasks.base import (
    Batch,
    Feature,
    FinetuneModel,
    Task,
    check_form,
    fit_length,
    pad_inputs,
    truncating,
)
from triform.inference.generate import generate
from triform.models import TransformerModel
from triform.nn.losses import IGNORE_INDEX, Counts, labelled, loss_share
from triform.tensors import pad_rows


class TextToText(Task):
    kind = "text-to-text"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_id = self.body_config.decoder_start_id
        limit = self.cfg.max_target_length or 1_000_000
        self.target_length = fit_length(limit, self.body_config)
        self.source_cut = truncating(self.tokenizer, self.max_length)
        self.target_cut = truncating(self.tokenizer, self.target_length)
        self.max_new_tokens = min(self.cfg.generate_max_tokens, self.target_length)

    def prepare_body(self, body: TransformerModel) -> None:
        check_form(self, body, ("encoder-decoder",))

    def build_head(self, body: TransformerModel) -> nn.Module:
        return nn.ModuleDict()  # the body's own LM head generates

    # -- data ----------------------------------------------------------------------------
    @property
    def target_column(self) -> str:
        return self.cfg.target

    def source_text(self, row: Row) -> str:
        """The task prefix (the row's own, else ``task_prefix``) + the source."""
        prefix = row.text(self.cfg.prefix) if row.has(self.cfg.prefix) else self.cfg.task_prefix
        return prefix + row.text(self.cfg.source)

    def _ids(self, texts: list[str], cut: Any, length: int) -> list[list[int]]:
        """Framed, cut token ids (sampled while encoding an epoch's training texts)."""
        if self.sampler is None:
            return [e.ids for e in cut.encode_batch(texts)]
        return [self.framing.frame(ids, None, length)[0] for ids in self.plain_ids(texts)]

    def encode(self, rows: list[Row], training: bool) -> list[Feature]:
        sources = self._ids(
            [self.source_text(row) for row in rows], self.source_cut, self.max_length
        )
        targets = None
        if training or self.has_targets(rows):
            texts = [row.text(self.cfg.target) for row in rows]
            targets = self._ids(texts, self.target_cut, self.target_length)
        features = []
        for i, source in enumerate(sources):
            feature: Feature = {"row": i, "input_ids": source}
            if targets is not None:
                labels = targets[i]
                feature["labels"] = labels
                feature["decoder_input_ids"] = [self.start_id, *labels[:-1]]
            features.append(feature)
        return features

    def collate(self, features: list[Feature]) -> Batch:
        batch = pad_inputs(features, self.pad_id, token_types=False)
        if "labels" in features[0]:
            batch["labels"] = pad_rows([f["labels"] for f in features], IGNORE_INDEX)[0]
            decoder_inputs = [f["decoder_input_ids"] for f in features]
            batch["decoder_input_ids"] = pad_rows(decoder_inputs, self.pad_id)[0]
        return batch

    def input_row(self, item: Any) -> dict[str, Any]:
        return item if isinstance(item, dict) else {self.cfg.source: item}

    # -- model ---------------------------------------------------------------------------
    def counts(self, batch: Batch) -> Counts:
        return {"tokens": labelled(batch["labels"])}

    def loss(
        self, model: FinetuneModel, batch: Batch, totals: Counts | None = None
    ) -> torch.Tensor:
        out = model.body(
            batch["input_ids"],
            batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
        )  # right-padded targets: causal attention never looks at the padding
        logits = out.logits.float()  # (B, T, V)
        loss = F.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX
        )
        return loss_share(loss, "tokens", self.counts(batch), totals)

    def outputs(self, model: FinetuneModel, batch: Batch) -> list[Any]:
        sequences = generate(
            model.body,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.specials.eos_id,
            pad_token_id=self.pad_id,
        )  # (B, 1 + new): the start token, then the generated tokens
        return [
            self.tokenizer.decode(row[1:].tolist(), skip_special_tokens=True).strip()
            for row in sequences.cpu()
        ]

    def decode(self, outputs: list[Any], features: list[Feature], rows: list[Row]) -> list[Any]:
        return list(outputs)

    def references(self, rows: list[Row]) -> list[Any]:
        return [row.text(self.cfg.target) for row in rows]

    def metrics(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return generation_metrics(predictions, references)
