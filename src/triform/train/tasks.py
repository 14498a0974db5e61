"""Pretraining tasks: for each objective, the reader that feeds it, the model it trains, its
loss and its evaluation metrics. The loop in :mod:`triform.train.loop` is the same for all.

A task's batches are pure functions of ``(seed, index)`` (the readers) and of a per-step
``torch.Generator`` (the objectives), which is what makes a resumed run exact.
"""

from __future__ import annotations

import math
from typing import Any

import tokenizers
import torch
from torch import nn

from triform.config import ModelConfig
from triform.data.objectives import (
    IGNORE_INDEX,
    Objective,
    ParallelCorpus,
    build_objective,
    context_from_tokenizer,
    generator_config,
    read_pairs,
    share_embeddings,
)
from triform.data.readers import (
    CausalWindows,
    DocumentSequences,
    PackedSequences,
    SentencePairs,
    check_rank,
    rank_slice,
)
from triform.errors import ConfigError, TriformError
from triform.models import TransformerModel, build_model
from triform.tokenizers import SpecialTokens
from triform.train.distributed import all_reduce_sums, rank, world_size
from triform.train.precision import autocast_context

# Keys of [objective] that configure the task around the objective, not the objective itself.
TASK_KEYS = ("generator_width", "generator_depth", "short_seq_prob")


class Task:
    """Reader + objective + model + loss for one pretraining run."""

    can_sample = False
    unused_parameters = False

    def __init__(
        self, run, model_config: ModelConfig, tokenizer: tokenizers.Tokenizer, shards
    ) -> None:
        self.run, self.tokenizer = run, tokenizer
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.name = run.objective["name"]
        self.model_config = self.fit_model_config(model_config)
        context = context_from_tokenizer(tokenizer)
        context["decoder_start_id"] = self.model_config.decoder_start_token_id
        options = {k: v for k, v in run.objective.items() if k not in TASK_KEYS}
        self.objective: Objective = build_objective(options, **context)
        self.train_reader, self.val_reader = self.readers(shards)

    # -- set-up -------------------------------------------------------------------------
    def fit_model_config(self, config: ModelConfig) -> ModelConfig:
        """The model config with the heads this objective trains (forms match: checked
        when the run config was read)."""
        return config

    def readers(self, shards) -> tuple[Any, Any]:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        return build_model(self.model_config)

    # -- the step -------------------------------------------------------------------------
    def train_batch(self, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The objective's batch number ``index`` (reader batch -> objective transform)."""
        return self.objective(self.train_reader.batch(index), generator)

    def loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict]:
        output = model(**self.objective.model_inputs(batch))
        loss, parts = self.objective.loss(output, batch)
        parts.update(self.accuracy(output, batch))
        return loss, parts

    def accuracy(self, output, batch) -> dict[str, torch.Tensor]:
        """Token accuracy over the labelled positions."""
        labels = batch.get("labels")
        if labels is None or output.logits is None or output.logits.dim() != 3:
            return {}
        counted = labels != IGNORE_INDEX
        correct = (output.logits.argmax(-1) == labels) & counted
        return {"accuracy": correct.sum() / counted.sum().clamp(min=1)}

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the model reads in ``batch`` (from shapes only: no device sync)."""
        total = batch["input_ids"].numel()
        if "decoder_input_ids" in batch:
            total += batch["decoder_input_ids"].numel()
        return total

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, device: torch.device, precision: str, max_batches: int
    ) -> dict[str, float]:
        """Mean loss and metrics over the first ``max_batches`` fixed validation batches
        (row-weighted; each rank evaluates its share of every batch, sums all-reduced)."""
        model.eval()
        totals: dict[str, float] = {}
        count = 0
        for index in range(min(max_batches, self.val_reader.num_batches)):
            generator = torch.Generator().manual_seed(index)  # the same masks every eval
            batch = self.objective(self.val_reader.batch(index), generator)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(precision, device):
                loss, parts = self.loss(model, batch, generator)
            rows = len(batch["input_ids"])
            for key, value in {"loss": loss, **parts}.items():
                totals[key] = totals.get(key, 0.0) + float(value) * rows
            count += rows
        totals, count = all_reduce_sums(totals, count)
        metrics = {key: value / max(count, 1) for key, value in totals.items()}
        lm_loss = metrics.get("mlm_loss", metrics.get("generator_loss", metrics.get("loss")))
        if lm_loss is not None and self.name != "rtd":
            metrics["perplexity"] = math.exp(min(lm_loss, 50.0))
        return metrics

    def sample(self, model: nn.Module, device: torch.device, tokens: int, prompt: str) -> str:
        raise NotImplementedError

    def _framing(self) -> dict[str, int | None]:
        s = self.special
        if s.cls_id is not None and s.sep_id is not None:
            return {"cls_id": s.cls_id, "sep_id": s.sep_id}
        return {"bos_id": s.bos_id, "eos_id": s.eos_id}


def micro_batch(run) -> int:
    """Rows of one micro-batch over all ranks: ``train.batch_size / train.grad_accum``
    (each reader hands this rank ``1 / world`` of them)."""
    return run.train.batch_size // run.train.grad_accum


def shard_readers(task: Task, shards, reader_class, seq_len: int, **options) -> tuple[Any, Any]:
    """The (shuffled train, fixed validation) readers of ``reader_class`` over the shards,
    each reading this rank's share of every global micro-batch."""
    train_shards, val_shards = shards
    if val_shards.n_tokens == 0:
        raise TriformError("the validation split is empty; raise data.val_fraction")
    run = task.run
    return tuple(
        reader_class(
            split,
            seq_len,
            micro_batch(run),
            run.train.seed,
            shuffle=shuffle,
            rank=rank(),
            world=world_size(),
            **options,
        )
        for split, shuffle in ((train_shards, True), (val_shards, False))
    )


class CausalLMTask(Task):
    can_sample = True

    def readers(self, shards):
        return shard_readers(self, shards, CausalWindows, self.run.data.seq_len)

    def sample(self, model, device, tokens, prompt):
        from triform.inference.generate import generate

        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
        ids = ids or [self.model_config.bos_token_id or 0]
        input_ids = torch.tensor([ids], device=device)
        generator = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG be
        out = generate(
            model,
            input_ids,
            max_new_tokens=tokens,
            do_sample=True,
            top_k=40,
            temperature=0.8,
            generator=generator,
        )
        return prompt + self.tokenizer.decode(out[0, len(ids) :].tolist())


class MaskedLMTask(Task):
    def fit_model_config(self, config):
        config = super().fit_model_config(config)
        if config.encoder_head != "mlm":
            config = config.replace(encoder_head="mlm")
        self.unused_parameters = config.pair_head != "none" or config.pooler
        return config

    def readers(self, shards):
        return shard_readers(
            self, shards, PackedSequences, self.run.data.seq_len, **self._framing()
        )


class SentencePairTask(Task):
    def fit_model_config(self, config):
        config = super().fit_model_config(config)
        pair = "nsp" if self.name == "mlm-nsp" else "sop"
        return config.replace(encoder_head="mlm", pair_head=pair)

    def readers(self, shards):
        run = self.run
        return shard_readers(
            self,
            shards,
            SentencePairs,
            run.data.seq_len,
            mode="nsp" if self.name == "mlm-nsp" else "sop",
            special=self.special,
            short_seq_prob=float(run.objective.get("short_seq_prob", 0.1)),
        )


class ElectraPair(TransformerModel):
    """ELECTRA's generator and discriminator, sharing token embeddings, trained as one
    module so that DDP/FSDP see a single forward."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, objective) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.config = discriminator.config
        self._objective = objective
        share_embeddings(generator, discriminator)

    def forward(self, batch: dict[str, torch.Tensor], draw: torch.Generator):
        return self._objective.step(self.generator, self.discriminator, batch, draw)


class ReplacedTokenTask(MaskedLMTask):
    def fit_model_config(self, config):
        config = Task.fit_model_config(self, config)
        self.unused_parameters = config.pooler
        return config.replace(encoder_head="rtd", pair_head="none")

    def build_model(self):
        width = float(self.run.objective.get("generator_width", 0.25))
        depth = float(self.run.objective.get("generator_depth", 1.0))
        generator = build_model(generator_config(self.model_config, width, depth))
        return ElectraPair(generator, build_model(self.model_config), self.objective)

    def loss(self, model, batch, generator=None):
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        return model(batch, generator)


class SpanCorruptionTask(Task):
    def readers(self, shards):
        raw_len = self.objective.source_length(self.run.data.seq_len)
        return shard_readers(self, shards, PackedSequences, raw_len)


class DenoisingTask(Task):
    def readers(self, shards):
        run = self.run
        return shard_readers(
            self,
            shards,
            DocumentSequences,
            run.data.seq_len,
            bos_id=self.special.bos_id,
            eos_id=self.special.eos_id,
        )


class Seq2SeqTask(Task):
    """The original Transformer on a TSV of source/target pairs."""

    def readers(self, shards):
        run = self.run
        pairs = read_pairs(run.data.sources)
        held_out = max(1, int(len(pairs) * run.data.val_fraction))
        if len(pairs) - held_out < 1:
            raise TriformError(f"{run.data.sources}: too few pairs to split ({len(pairs)})")
        limit = run.data.seq_len
        train = ParallelCorpus.from_pairs(pairs[:-held_out], self.tokenizer, limit, limit)
        val = ParallelCorpus.from_pairs(pairs[-held_out:], self.tokenizer, limit, limit)
        size, where = micro_batch(run), {"rank": rank(), "world": world_size()}
        return (
            _PairReader(train, size, run.train.seed, self.special, True, **where),
            _PairReader(val, size, run.train.seed, self.special, False, **where),
        )


class _PairReader:
    """Length-bucketed batches of a :class:`ParallelCorpus`, a function of (seed, step,
    rank, world): rank ``rank`` collates its contiguous share of each global batch.
    Training drops each epoch's short last batch, so every rank always has rows."""

    def __init__(
        self,
        corpus: ParallelCorpus,
        batch_size: int,
        seed: int,
        special: SpecialTokens,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        check_rank(batch_size, rank, world)
        self.corpus, self.batch_size, self.seed, self.shuffle = corpus, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.pad_id = special.pad_id if special.pad_id is not None else 0
        self._epoch, self._rows = -1, []
        self.num_batches = len(self._epoch_rows(0))
        if self.num_batches == 0:
            raise TriformError(
                f"{len(corpus)} pairs are fewer than one batch of {batch_size}; "
                "lower train.batch_size"
            )

    def _epoch_rows(self, epoch: int) -> list[torch.Tensor]:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            rows = self.corpus.batch_rows(
                self.batch_size, generator if self.shuffle else None, drop_last=self.shuffle
            )
            self._rows = [r for r in rows if len(r) >= self.world]  # a row for every rank
            self._epoch = epoch
        return self._rows

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rows = self._epoch_rows(step // self.num_batches)[step % self.num_batches]
        return self.corpus.collate(rows[rank_slice(len(rows), self.rank, self.world)], self.pad_id)


TASKS: dict[str, type[Task]] = {
    "causal-lm": CausalLMTask,
    "mlm": MaskedLMTask,
    "mlm-nsp": SentencePairTask,
    "mlm-sop": SentencePairTask,
    "rtd": ReplacedTokenTask,
    "span-corruption": SpanCorruptionTask,
    "denoising": DenoisingTask,
    "seq2seq": Seq2SeqTask,
}


def build_task(run, model_config: ModelConfig, tokenizer: tokenizers.Tokenizer, shards) -> Task:
    """The task for ``run.objective["name"]``."""
    name = run.objective.get("name")
    if name not in TASKS:
        raise ConfigError(f"objective.name must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name](run, model_config, tokenizer, shards)
