"""A pretraining run's task: its objective joined to the readers over the run's shards and
to its model (:class:`PretrainingTask`), what the readers are made from (:class:`RunData`),
and the evaluation over validation windows spread across the whole split.

:class:`~triform.train.loop.PretrainingRun` hands a task's micro-batches and losses to the
one :class:`~triform.train.trainer.Trainer`; the scaling sweep and ``triform evaluate``
evaluate with the same rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import tokenizers
import torch
from torch import nn

from triform.config import ModelConfig
from triform.data.readers import evaluation_samples, rank_slice
from triform.data.resampling import ResampledReader
from triform.errors import TriformError
from triform.inference.generate import generate
from triform.nn.losses import IGNORE_INDEX, Counts
from triform.objectives import Objective, build_objective_for_run
from triform.objectives.ops import Batch, SampleDraws
from triform.runtime.distributed import all_reduce_sums, rank, world_size
from triform.runtime.precision import autocast_context
from triform.tokenizers import SpecialTokens

Step = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (loss, detached parts and metrics)


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
        """``prompt`` and ``tokens`` tokens a generative objective's model samples after it
        (top-k 40, temperature 0.8, seed 0: the global RNG is left as it was)."""
        if not self.objective.generative:
            raise TriformError(f"objective {self.name} does not generate text")
        tokenizer = self.data.tokenizer
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
        ids = ids or [model.config.bos_token_id or 0]
        input_ids = torch.tensor([ids], device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        out = generate(
            model,
            input_ids,
            max_new_tokens=tokens,
            do_sample=True,
            top_k=40,
            temperature=0.8,
            generator=generator,
        )
        return prompt + tokenizer.decode(out[0, len(ids) :].tolist())


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


def build_task(
    run: Any, model_config: ModelConfig, tokenizer: tokenizers.Tokenizer, shards: Any
) -> PretrainingTask:
    """The task of a run: its objective (:func:`~triform.objectives.build_objective_for_run`)
    and its readers over ``shards``."""
    objective, model_config = build_objective_for_run(run, model_config, tokenizer)
    return PretrainingTask(objective, model_config, RunData.of(run, tokenizer, shards))
