"""Fine-tuning: pretrained body + new head, every parameter trained (or less:
``train.freeze``, ``train.freeze_layers``, ``[lora]``; see :mod:`triform.finetune.adapters`),
as a :class:`FinetuneRun` that the one :class:`~triform.train.trainer.Trainer` drives (so it
has everything pretraining has: the run folder's lock, SIGINT / SIGTERM checkpoints,
``max_minutes``, DDP / FSDP2, activation checkpointing, ``torch.compile``, fused AdamW).

The body learns at ``optim.body_lr`` and the head at ``optim.lr`` (AdamW, weight decay on
weights only, as in pretraining); the learning rate warms up then decays linearly (or by
cosine) to zero (``[schedule]``). A step is ``train.batch_size`` examples in
``train.grad_accum`` micro-batches; its loss is the task's sum over what it counts (rows,
labelled tokens) divided by the step's count, however the step is split. The model is
evaluated after every epoch (or every ``eval_every`` steps); the best evaluation by
``task.metric`` is kept in ``best/`` and the last state in ``final/``;
``train.early_stopping_patience`` evaluations without an improvement of at least
``train.early_stopping_min_delta`` end the run early. A test file, when given, is
predicted with the best model into ``predictions.jsonl`` (and scored if it has labels).
``results.json`` sums the run up.

Resumable checkpoints (model, optimizer, scheduler, RNG states, the evaluations so far) go to
``checkpoints/step-N/`` after every epoch (or every ``checkpoint_every`` steps), written
atomically, the last ``keep_last`` kept. The data order of an epoch is a function of the
seed and the epoch (so is its subword sampling), so ``finetune(config, resume=run_dir)``
continues exactly where the run stopped: it ends with the same weights as a run that was
never interrupted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from triform.data.readers import rank_slice
from triform.errors import TriformError
from triform.finetune.adapters import Adaptation
from triform.finetune.body import load_body
from triform.finetune.config import (
    FinetuneConfig,
    higher_is_better,
    load_finetune_config,
    task_metrics,
)
from triform.finetune.custom_metric import is_custom, shown, start_custom_metric
from triform.finetune.data import Row, read_rows
from triform.finetune.metrics import format_metric
from triform.finetune.saved import save_finetuned
from triform.finetune.tasks import FinetuneModel, Task, build_task, evaluate
from triform.finetune.tasks.base import Feature
from triform.outputs import RunFolder, check_run_folder, prepare_run_folder
from triform.runs import CHECKPOINTS, full_state_dict, resolve_checkpoint, write_json
from triform.runtime.allocator import apply_process_settings
from triform.runtime.device import pick_device
from triform.runtime.distributed import (
    barrier,
    broadcast_object,
    init_distributed,
    is_fsdp,
    is_main_process,
    rank,
    split_batch,
    world_size,
)
from triform.runtime.precision import resolve_precision
from triform.train.checkpoint import prune_checkpoints
from triform.train.optim import OptimConfig, build_optimizer, decay_split
from triform.train.schedules import build_scheduler
from triform.train.trainer import LoopSettings, Trainer, TrainingRun


@dataclass
class FinetuneResult:
    """What a finished fine-tuning run reports (also written to ``results.json``)."""

    out_dir: Path
    steps: int
    metric: str
    best_value: float | None
    best_step: int | None
    best_dir: Path | None
    final_dir: Path | None
    validation: dict[str, float]
    test: dict[str, float] | None
    train_loss: float
    seconds: float
    stopped_early: bool = field(default=False)
    parameters: int = 0
    """Every parameter of the model (body, adapters and head)."""
    trainable_parameters: int = 0
    """Those the optimizer updated (all of them unless ``train.freeze`` or ``[lora]``)."""

    def summary(self) -> str:
        """One line: the chosen metric at its best (percentages marked ``%``), where the
        model is."""
        where = self.best_dir or self.final_dir
        early = " (stopped early)" if self.stopped_early else ""
        line = (
            f"done: {self.steps} steps{early} in {self.seconds:.0f}s, train loss "
            f"{self.train_loss:.4f}; best validation {format_metric(self.metric, self.best_value)}"
            f" (step {self.best_step}); model: {where}"
        )
        if self.test:
            line += "; test " + ", ".join(format_metric(k, v) for k, v in self.test.items())
        return line

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def param_groups(model: FinetuneModel, lr: float, body_lr: float, weight_decay: float) -> list:
    """AdamW groups: body and head, each split into decayed weights and the rest (biases,
    norms, position tables). Every group has its own ``lr`` and a ``group`` name
    (``body/decay``, ``body/no_decay``, ``head/decay``, ``head/no_decay``)."""
    decay, no_decay = decay_split(model, OptimConfig(lr=lr, weight_decay=weight_decay))
    by_name = dict(model.named_parameters())
    groups = []
    for part, part_lr in (("body", body_lr), ("head", lr)):
        for names, wd, tag in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
            params = [by_name[n] for n in names if n.startswith(f"{part}.")]
            if params:
                groups.append(
                    {"params": params, "lr": part_lr, "weight_decay": wd, "group": f"{part}/{tag}"}
                )
    return groups


def _score(metrics: dict[str, float], metric: str, higher: bool | None = None) -> float:
    """The selection score: larger is better, NaN is the worst. ``higher``: whether a larger
    ``metric`` is better (default: its own direction)."""
    value = metrics.get(metric, math.nan)
    if value is None or value != value:
        return -math.inf
    return value if (higher_is_better(metric) if higher is None else higher) else -value


def _read(path: str | None, fmt: str) -> list[Row]:
    return read_rows(path, fmt) if path else []


def finetune(
    config: FinetuneConfig | str | Path,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune as ``config`` (a :class:`FinetuneConfig` or a TOML path) says; with
    ``resume`` (a run folder or one of its ``checkpoints/step-N`` folders), continue that
    run from its checkpoint, in its folder. A folder that holds an earlier run is refused
    unless ``overwrite``: that run is then moved aside into ``previous-<time>/`` (see
    :func:`triform.outputs.prepare_run_folder`)."""
    if isinstance(config, FinetuneConfig):
        if overrides:
            config = load_finetune_config(tree=config.to_dict(), overrides=overrides)
    else:
        config = load_finetune_config(config, overrides)
    threads = torch.get_num_threads()
    try:
        apply_process_settings(config.train.threads, config.train.keep_freed_memory)
        return _finetune(config, resume, overwrite)
    finally:
        torch.set_num_threads(threads)  # the thread count is process-wide: put it back


def _finetune(
    config: FinetuneConfig, resume: str | Path | None, overwrite: bool = False
) -> FinetuneResult:
    train = config.train
    init_distributed()  # under torchrun: one process per GPU (or CPU share)
    device = pick_device(train.device)
    precision = resolve_precision(train.precision, device)
    out_dir, checkpoint = Path(train.out_dir), None
    if resume is not None:
        checkpoint = resolve_checkpoint(resume)
        out_dir = checkpoint.parent.parent  # run/checkpoints/step-N
        if checkpoint.parent.name != CHECKPOINTS:
            raise TriformError(f"{resume} is not a fine-tuning run folder (no checkpoints)")
    task_cfg = config.task
    check_run_folder(
        out_dir,
        "finetune",
        overwrite=overwrite,
        resume=resume is not None,
        inputs=[task_cfg.train, task_cfg.validation, task_cfg.test, config.model.tokenizer],
    )
    torch.manual_seed(train.seed)
    run = FinetuneRun(config, out_dir)
    run.device, run.precision = device, precision
    loop = replace(
        LoopSettings.of(train),
        out_dir=out_dir,
        steps=run.total_steps,
        eval_every=train.eval_every,
        checkpoint_every=train.checkpoint_every,
    )

    def make_run() -> FinetuneRun:  # under the run folder's lock
        if is_main_process():  # an earlier run's results are moved aside, never mixed in
            resuming = checkpoint is not None
            run.folder = prepare_run_folder(
                out_dir, "finetune", overwrite=overwrite, resume=resuming
            )
            prune_checkpoints(out_dir, train.keep_last, keep=checkpoint)
            write_json(out_dir / "finetune_config.json", config.to_dict())
        barrier()
        return run

    def banner(model: nn.Module) -> str:
        body = run.model.body
        workers = f" x {world_size()} processes" if world_size() > 1 else ""
        return (
            f"fine-tuning {body.config.family} {body.config.form} "
            f"({body.num_parameters():,} + "
            f"{sum(p.numel() for p in run.model.head.parameters()):,} head parameters) "
            f"for {run.task.kind} on {len(run.train_rows)} examples: {run.total_steps} "
            f"steps of {train.batch_size} ({train.grad_accum} micro-batches{workers}) on "
            f"{device} ({precision}){run.adaptation.describe()}"
        )

    trainer = Trainer(
        loop,
        device=device,
        precision=precision,
        make_optimizer=lambda model, groups: build_optimizer(model, config.optim, groups),
        make_scheduler=lambda opt, steps: build_scheduler(opt, config.schedule, steps),
        grad_clip=config.optim.grad_clip,
        resume_from=checkpoint,
        banner=banner,
    )
    done = trainer.fit(make_run)
    final_dir = None
    if train.save_final or run.best_dir is None:
        final_dir = out_dir / "final"
        run.save(final_dir, done.steps)
    test = run.predict_test() if is_main_process() else None
    result = FinetuneResult(
        out_dir,
        done.steps,
        run.metric,
        run.best_value,
        run.best_step,
        run.best_dir,
        final_dir,
        run.validation,
        test,
        done.train_loss,
        done.seconds,
        done.stopped_early,
        parameters=run.adaptation.total,
        trainable_parameters=run.adaptation.trainable,
    )
    if is_main_process():
        (out_dir / "results.json").write_text(
            json.dumps(_clean(result.to_dict()), indent=2, allow_nan=False)
        )
    barrier()  # the other ranks leave once rank 0 has written everything
    return result


class FinetuneRun(TrainingRun):
    """One fine-tuning run as the :class:`~triform.train.trainer.Trainer` drives it: the
    body and new head, the epochs' batches, the task's loss, evaluation with the best model
    kept in ``best/`` and early stopping."""

    def __init__(self, config: FinetuneConfig, out_dir: Path) -> None:
        self.config, self.out_dir = config, out_dir
        train = config.train
        self.rank, self.world = rank(), world_size()
        self.hint = "lower optim.lr"
        self.unused_parameters = True  # heads leave some body parameters without gradients
        self.metric = config.metric
        task_cfg = config.task
        self.train_rows = _read(task_cfg.train, task_cfg.format)
        self.val_rows = _read(task_cfg.validation, task_cfg.format)
        self.test_rows = _read(task_cfg.test, task_cfg.format)
        torch.manual_seed(train.seed)  # a preset body is drawn from the seed (and redrawn so)
        body, tokenizer = load_body(config.model)
        self.adaptation = Adaptation(config, body)  # what trains (LoRA: the base as loaded)
        self.task: Task = build_task(task_cfg, tokenizer, body.config)
        self.task.setup(self.train_rows)
        self.task.check_targets(self.val_rows, "validation")
        self.task.prepare_body(body)
        self.custom = None  # task.metric = "module:function": computed beside the built-ins
        if is_custom(task_cfg.metric):
            self.custom, self.metric = start_custom_metric(
                task_cfg, self.task, self.val_rows, task_metrics(task_cfg)
            )
        self.higher = higher_is_better(self.metric, task_cfg.metric_mode)
        torch.manual_seed(train.seed)  # the head's init does not depend on how the body loaded
        self.model = FinetuneModel(body, self.task.build_head(body))
        self.adaptation.apply(self.model)  # freezes, adds adapters: before the optimizer
        self.features = self.task.train_features(self.train_rows, train.seed, epoch=0)
        if not self.features:
            raise TriformError(f"{task_cfg.train}: no training examples")
        self.steps_per_epoch = math.ceil(len(self.features) / train.batch_size)
        self.total_steps = (
            train.steps if train.steps is not None else train.epochs * self.steps_per_epoch
        )
        split_batch(train.batch_size, train.grad_accum, self.world)  # an even split, or refuse
        self.device = torch.device("cpu")
        self.precision = "fp32"
        self._epoch: tuple[int, list[list[Feature]]] | None = None
        # the evaluations so far: the last one's metrics, the best one and where it is kept,
        # and how many evaluations in a row brought no improvement (early stopping)
        self.validation: dict[str, float] = {}
        self.best_score = -math.inf
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_dir: Path | None = None
        self.bad_evaluations = 0
        self.folder: RunFolder | None = None  # rank 0's, once the run folder is ready

    # -- what the Trainer asks --------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return self.model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        optim = self.config.optim
        body_lr = optim.body_lr if optim.body_lr is not None else optim.lr
        return param_groups(self.model, optim.lr, body_lr, optim.weight_decay)

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This rank's contiguous share of global batch ``step`` in ``grad_accum``
        micro-batches. A rank whose share of a short last batch is empty runs one example
        that counts for nothing (``counted`` 0), so that every rank takes part in the
        gradient reduction."""
        epoch, index = divmod(step, self.steps_per_epoch)
        features = self._steps(epoch)[index]
        mine = features[rank_slice(len(features), self.rank, self.world)]
        counted = 1.0
        if not mine:
            mine, counted = features[:1], 0.0
        micro = -(-len(mine) // self.config.train.grad_accum)
        parts = [mine[m : m + micro] for m in range(0, len(mine), micro)]
        return [{**self.task.collate(part), "counted": torch.tensor(counted)} for part in parts]

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        counted = batch["counted"]
        return {k: v * counted for k, v in self.task.counts(_task_batch(batch)).items()}

    def loss(self, model, batch, totals):
        return model(self.task, _task_batch(batch), totals) * batch["counted"], {}

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].numel())

    def evaluate(self, model: nn.Module, wrapped: nn.Module, step: int) -> dict[str, float]:
        """The validation rows' metrics: rank 0 evaluates the plain model (under FSDP every
        rank runs the collective forward passes), every rank takes its metrics, so that the
        best step and early stopping are decided alike everywhere."""
        if not self.val_rows:
            return {}
        validation = None
        if is_fsdp(model):  # the task calls the body, not the root: gather the root's own
            model.unshard()
            try:
                validation = self._evaluate(self.val_rows)[0]
            finally:
                model.reshard()
        elif is_main_process():
            validation = self._evaluate(self.val_rows)[0]
        self.validation = broadcast_object(validation)
        return self.validation

    def after_evaluation(self, step, metrics, model, logger) -> bool:
        """A new best by the chosen metric replaces ``best/``; an evaluation that does not
        beat the best by ``early_stopping_min_delta`` counts towards early stopping."""
        if not metrics:
            return False
        score = _score(metrics, self.metric, self.higher)
        first = self.best_step is None
        if first or score > self.best_score + self.config.train.early_stopping_min_delta:
            self.bad_evaluations = 0
        else:
            self.bad_evaluations += 1
        if first or score > self.best_score:
            self.best_score, self.best_step = score, step
            self.best_value = metrics.get(self.metric)
            self.best_dir = self.out_dir / "best"
            self.save(self.best_dir, step)
        stop = self.stop_reason() is not None
        if stop and is_main_process():
            print(self.stop_reason())
        return stop

    def stop_reason(self) -> str | None:
        patience = self.config.train.early_stopping_patience
        if patience is None or self.bad_evaluations < patience:
            return None
        return (
            f"early stopping at step {self.best_step}+: validation {self.metric} has not "
            f"improved for {self.bad_evaluations} evaluations"
        )

    def data_position(self, step: int) -> dict[str, int]:
        return {"epoch": step // self.steps_per_epoch, "step": step % self.steps_per_epoch}

    def check_data_position(self, saved: Any, step: int) -> None:
        expected = self.data_position(step)
        if saved is not None and saved != expected:
            raise TriformError(
                f"the training data or batch size changed since the checkpoint: its step "
                f"{step} was step {saved['step']} of epoch {saved['epoch']}, with this config "
                f"it is step {expected['step']} of epoch {expected['epoch']}; cannot resume "
                "exactly"
            )

    def state(self) -> dict[str, Any]:
        return {
            "validation": self.validation,
            "best_score": self.best_score,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "bad_evaluations": self.bad_evaluations,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.validation = state.get("validation") or {}
        self.best_score = state.get("best_score", -math.inf)
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        if self.best_step is not None and (self.out_dir / "best").is_dir():
            self.best_dir = self.out_dir / "best"
        self.bad_evaluations = int(state.get("bad_evaluations", 0))

    # -- the run's own ----------------------------------------------------------------------
    def save(self, folder: Path, step: int) -> None:
        """Write the model to ``folder`` (every rank gathers under FSDP; rank 0 writes)."""
        weights = full_state_dict(self.model)
        if is_main_process():
            if self.folder is not None:  # the earlier run's results go aside only now
                self.folder.set_aside_results()
            save_finetuned(
                folder,
                self.model,
                self.task,
                step=step,
                metrics=self.validation,
                weights=weights,
                adaptation=self.adaptation,
            )

    def _evaluate(self, rows: list[Row]) -> tuple[dict[str, float], list[Any]]:
        size = self.config.train.eval_batch_size or self.config.train.batch_size
        metrics, predictions = evaluate(
            self.task, self.model, rows, size, self.device, self.precision
        )
        if metrics and self.custom is not None:
            metrics.update(self.custom(*shown(self.task, predictions, rows)))
        return metrics, predictions

    def _steps(self, epoch: int) -> list[list[Feature]]:
        """The optimizer steps of one epoch: each the ``batch_size`` features of the global
        batch (the same on every rank)."""
        if self._epoch is None or self._epoch[0] != epoch:
            size = self.config.train.batch_size
            features = self._epoch_features(epoch)
            order = self._order(epoch, features)
            steps = [[features[i] for i in order[s : s + size]] for s in range(0, len(order), size)]
            self._epoch = (epoch, steps)
        return self._epoch[1]

    def _epoch_features(self, epoch: int) -> list[Feature]:
        """The training features of ``epoch`` (re-tokenized each epoch when sampling)."""
        if epoch == 0 or not self.task.samples_subwords:
            return self.features
        return self.task.train_features(self.train_rows, self.config.train.seed, epoch)

    def _order(self, epoch: int, features: list[Feature]) -> list[int]:
        """The feature indices of one epoch: a seeded permutation, or (``balanced``) as
        many draws with replacement, each class equally likely."""
        generator = torch.Generator().manual_seed(self.config.train.seed * 1009 + epoch)
        if self.config.train.sampler == "balanced":
            labels = torch.tensor([f["label"] for f in features])
            weights = 1.0 / torch.bincount(labels).double()[labels]  # (N,)
            draws = torch.multinomial(weights, len(features), True, generator=generator)
            return draws.tolist()
        return torch.randperm(len(features), generator=generator).tolist()

    def predict_test(self) -> dict[str, float] | None:
        """Predict the test file with the best model; its metrics when it has labels."""
        if not self.test_rows:
            return None
        if self.best_dir is not None:
            self.adaptation.load_saved(self.model, self.best_dir)
        metrics, predictions = self._evaluate(self.test_rows)
        with (self.out_dir / "predictions.jsonl").open("w", encoding="utf-8") as out:
            for row, prediction in zip(self.test_rows, predictions, strict=True):
                record = {"source": row.source, "prediction": self.task.show(prediction)}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return metrics or None


def _task_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The task's batch: without the trainer's ``counted`` flag."""
    return {k: v for k, v in batch.items() if k != "counted"}


def _clean(value: Any) -> Any:
    """Plain JSON data: NaN and infinities become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
