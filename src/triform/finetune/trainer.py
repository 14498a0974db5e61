"""The fine-tuning loop: pretrained body + new head, every parameter trained.

The body learns at ``train.body_lr`` and the head at ``train.lr`` (AdamW, weight decay on
weights only, as in pretraining); the learning rate warms up then decays linearly (or by
cosine) to zero. A step is ``train.batch_size`` examples in ``train.grad_accum``
micro-batches. The model is evaluated after every epoch (or every ``eval_every`` steps); the
best evaluation by ``task.metric`` is kept in ``best/`` and the last state in ``final/``;
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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from triform.data.readers import rank_slice
from triform.errors import TriformError
from triform.finetune.body import load_body
from triform.finetune.config import FinetuneConfig, higher_is_better, load_finetune_config
from triform.finetune.data import Row, read_rows
from triform.finetune.metrics import format_metric
from triform.finetune.saved import save_finetuned
from triform.finetune.tasks import FinetuneModel, Task, build_task, evaluate
from triform.finetune.tasks.base import Feature, to_device
from triform.outputs import RunFolder, check_run_folder, claim_run_folder
from triform.runs import CHECKPOINTS, load_weights, resolve_checkpoint, write_json
from triform.runtime.allocator import apply_process_settings
from triform.runtime.device import pick_device
from triform.runtime.distributed import (
    all_reduce_sums,
    barrier,
    broadcast_object,
    gradient_sync,
    init_distributed,
    is_main_process,
    rank,
    split_batch,
    world_size,
    wrap_model,
)
from triform.runtime.precision import autocast_context, grad_scaler, resolve_precision
from triform.train.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from triform.train.metrics import MetricsLogger
from triform.train.optim import OptimConfig, decay_split
from triform.train.schedules import ScheduleConfig, build_scheduler
from triform.train.steps import OptimizerStep


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


def _score(metrics: dict[str, float], metric: str) -> float:
    """The selection score: larger is better, NaN is the worst."""
    value = metrics.get(metric, math.nan)
    if value is None or value != value:
        return -math.inf
    return value if higher_is_better(metric) else -value


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
    :func:`triform.outputs.claim_run_folder`)."""
    if isinstance(config, FinetuneConfig):
        if overrides:
            config = load_finetune_config(tree=config.to_dict(), overrides=overrides)
    else:
        config = load_finetune_config(config, overrides)
    threads = torch.get_num_threads()
    try:
        apply_process_settings(config.train.threads, config.train.keep_freed_memory)
        runner = Finetuner(config, resume, overwrite)
        try:
            return runner.run()
        finally:
            if runner.folder is not None:
                runner.folder.release()
    finally:
        torch.set_num_threads(threads)  # the thread count is process-wide: put it back


class Finetuner:
    """One fine-tuning run: set-up in ``__init__``, the loop in :meth:`run`."""

    def __init__(
        self, config: FinetuneConfig, resume: str | Path | None = None, overwrite: bool = False
    ) -> None:
        self.config = config
        train = config.train
        init_distributed()  # under torchrun: one process per GPU (or CPU share)
        self.rank, self.world = rank(), world_size()
        self.device = pick_device(train.device)
        self.precision = resolve_precision(train.precision, self.device)
        torch.manual_seed(train.seed)
        self.checkpoint: Path | None = None
        self.out_dir = Path(train.out_dir)
        if resume is not None:
            self.checkpoint = resolve_checkpoint(resume)
            self.out_dir = self.checkpoint.parent.parent  # run/checkpoints/step-N
            if self.checkpoint.parent.name != CHECKPOINTS:
                raise TriformError(f"{resume} is not a fine-tuning run folder (no checkpoints)")
        self.overwrite = overwrite
        self.folder: RunFolder | None = None  # claimed (locked) by rank 0 in run()
        task_cfg = config.task
        check_run_folder(
            self.out_dir,
            "finetune",
            overwrite=overwrite,
            resume=resume is not None,
            inputs=[task_cfg.train, task_cfg.validation, task_cfg.test, config.model.tokenizer],
        )
        self.metric = config.metric

        self.train_rows = _read(task_cfg.train, task_cfg.format)
        self.val_rows = _read(task_cfg.validation, task_cfg.format)
        self.test_rows = _read(task_cfg.test, task_cfg.format)
        body, tokenizer = load_body(config.model)
        self.task: Task = build_task(task_cfg, tokenizer, body.config)
        self.task.setup(self.train_rows)
        self.task.check_targets(self.val_rows, "validation")
        self.task.prepare_body(body)
        torch.manual_seed(train.seed)  # the head's init does not depend on how the body loaded
        self.model = FinetuneModel(body, self.task.build_head(body)).to(self.device)
        # several processes: DDP (heads leave some body parameters without gradients)
        self.wrapped = wrap_model(self.model, "auto", find_unused_parameters=True)
        self.features = self.task.train_features(self.train_rows, train.seed, epoch=0)
        if not self.features:
            raise TriformError(f"{task_cfg.train}: no training examples")
        self.per_epoch = math.ceil(len(self.features) / train.batch_size)
        self.total_steps = train.steps if train.steps is not None else train.epochs * self.per_epoch
        body_lr = train.body_lr if train.body_lr is not None else train.lr
        groups = param_groups(self.model, train.lr, body_lr, train.weight_decay)
        split_batch(train.batch_size, train.grad_accum, self.world)  # an even split, or refuse
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(groups, lr=train.lr, **fused)
        warmup = train.warmup_steps
        if warmup is None:
            warmup = int(train.warmup_ratio * self.total_steps)
        schedule = ScheduleConfig(kind=train.schedule, warmup_steps=warmup, min_lr_ratio=0.0)
        self.scheduler = build_scheduler(self.optimizer, schedule, self.total_steps)
        # the evaluations so far: the last one's metrics, the best one and where it is kept,
        # and how many evaluations in a row brought no improvement (early stopping)
        self.validation: dict[str, float] = {}
        self.best_score = -math.inf
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_dir: Path | None = None
        self.bad_evaluations = 0

    # ----------------------------------------------------------------------------------
    def _evaluate(self, rows: list[Row]) -> tuple[dict[str, float], list[Any]]:
        size = self.config.train.eval_batch_size or self.config.train.batch_size
        return evaluate(self.task, self.model, rows, size, self.device, self.precision)

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

    def _steps(self, epoch: int) -> list[list[Feature]]:
        """The optimizer steps of one epoch: each the ``batch_size`` features of the global
        batch (the same on every rank)."""
        size = self.config.train.batch_size
        features = self._epoch_features(epoch)
        order = self._order(epoch, features)
        return [[features[i] for i in order[s : s + size]] for s in range(0, len(order), size)]

    def _train_step(
        self, features: list[Feature], finish_step: OptimizerStep, step: int
    ) -> torch.Tensor:
        """Optimizer step number ``step`` on one global batch: this rank's contiguous share
        of it in ``grad_accum`` micro-batches, each weighted by its share of the global batch
        (DDP averages the ranks' gradients, hence the factor ``world``). A rank whose share
        of a short last batch is empty runs one example at weight 0, so that every rank takes
        part in the gradient reduction. Returns the global batch's loss."""
        train = self.config.train
        mine = features[rank_slice(len(features), self.rank, self.world)]
        weight = self.world / len(features)
        if not mine:
            mine, weight = features[:1], 0.0
        micro = -(-len(mine) // train.grad_accum)
        parts = [mine[m : m + micro] for m in range(0, len(mine), micro)]
        step_loss = torch.zeros((), device=self.device)
        for index, part in enumerate(parts):
            batch = to_device(self.task.collate(part), self.device)
            with gradient_sync(self.wrapped, index == len(parts) - 1):
                with autocast_context(self.precision, self.device):
                    loss = self.wrapped(self.task, batch) * (len(part) * weight)
                finish_step.scaler.scale(loss).backward()
            step_loss += loss.detach()
        finish_step.watch(step_loss, step)
        finish_step(step)
        return step_loss / self.world  # this rank's part of the global mean

    def _state(self, running: Any, count: int, last_loss: float) -> dict[str, Any]:
        """What a checkpoint keeps besides tensors: the evaluations so far."""
        return {
            "validation": self.validation,
            "best_score": self.best_score,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "bad_evaluations": self.bad_evaluations,
            "running": float(running),
            "count": count,
            "last_loss": last_loss,
        }

    def _checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """A resumable checkpoint of ``step`` (atomic; the last ``keep_last`` kept; rank 0
        writes it)."""
        if not is_main_process():
            return
        position = {"epoch": step // self.per_epoch, "step": step % self.per_epoch}
        save_checkpoint(
            self.out_dir,
            step,
            self.model,
            self.optimizer,
            self.scheduler,
            extra=state,
            keep_last=self.config.train.keep_last,
            data_position=position,
        )

    def _resume(self) -> tuple[int, float, int, float]:
        """Restore the checkpoint (RNG states last); the step, running loss sum and count
        and the last logged loss."""
        assert self.checkpoint is not None
        state = load_checkpoint(self.checkpoint, self.wrapped, self.optimizer, self.scheduler)
        extra = state.extra
        self.validation = extra.get("validation") or {}
        self.best_score = extra.get("best_score", -math.inf)
        self.best_value = extra.get("best_value")
        self.best_step = extra.get("best_step")
        if self.best_step is not None and (self.out_dir / "best").is_dir():
            self.best_dir = self.out_dir / "best"
        self.bad_evaluations = int(extra.get("bad_evaluations", 0))
        expected = {"epoch": state.step // self.per_epoch, "step": state.step % self.per_epoch}
        saved = state.data_position
        if saved is not None and saved != expected:
            raise TriformError(
                f"{self.checkpoint}: the training data or batch size changed since the "
                f"checkpoint: its step {state.step} was step {saved['step']} of epoch "
                f"{saved['epoch']}, with this config it is step {expected['step']} of epoch "
                f"{expected['epoch']}; cannot resume exactly"
            )
        if is_main_process():
            print(f"resumed from step {state.step} of {self.out_dir}")
        return (
            state.step,
            extra.get("running", 0.0),
            extra.get("count", 0),
            extra.get("last_loss", math.nan),
        )

    def _patience_left(self) -> bool:
        patience = self.config.train.early_stopping_patience
        return patience is None or self.bad_evaluations < patience

    def run(self) -> FinetuneResult:
        cfg, train = self.config, self.config.train
        main = is_main_process()
        if main:  # an earlier run's results are moved aside, never mixed with this run's
            resume = self.checkpoint is not None
            self.folder = claim_run_folder(
                self.out_dir, "finetune", overwrite=self.overwrite, resume=resume
            )
            prune_checkpoints(self.out_dir, train.keep_last, keep=self.checkpoint)
            write_json(self.out_dir / "finetune_config.json", cfg.to_dict())
        barrier()
        step, running, count, last_loss = 0, 0.0, 0, math.nan
        if self.checkpoint is not None:  # last, so the restored RNG state is the next used
            step, running, count, last_loss = self._resume()
        logger = MetricsLogger(
            self.out_dir,
            self.total_steps,
            enabled=main,
            tensorboard=train.tensorboard,
            progress=train.progress,
            initial_step=step,
        )
        body = self.model.body
        workers = f" x {self.world} processes" if self.world > 1 else ""
        if main:
            print(
                f"fine-tuning {body.config.family} {body.config.form} "
                f"({self.model.body.num_parameters():,} + "
                f"{sum(p.numel() for p in self.model.head.parameters()):,} head parameters) "
                f"for {self.task.kind} on {len(self.train_rows)} examples: {self.total_steps} "
                f"steps of {train.batch_size} ({train.grad_accum} micro-batches{workers}) on "
                f"{self.device} ({self.precision})"
            )
        started = time.perf_counter()
        scaler = grad_scaler(self.precision, self.device)
        finish_step = OptimizerStep(
            self.wrapped, self.optimizer, self.scheduler, scaler, train.grad_clip, "lower train.lr"
        )
        self.wrapped.train()
        stopped = not self._patience_left()
        epoch, skip = divmod(step, self.per_epoch)
        while step < self.total_steps and not stopped:
            steps = self._steps(epoch)
            for index, features in enumerate(steps[skip:], start=skip):
                step += 1
                loss = self._train_step(features, finish_step, step)
                running += loss
                count += 1
                done = step >= self.total_steps
                end_of_epoch = index == len(steps) - 1
                evaluating = self.val_rows and (
                    done
                    or (train.eval_every and step % train.eval_every == 0)
                    or (not train.eval_every and end_of_epoch)
                )
                saving = (train.checkpoint_every and step % train.checkpoint_every == 0) or (
                    not train.checkpoint_every and end_of_epoch
                )
                if step % train.log_every == 0 or done or evaluating or saving:
                    finish_step.check()  # nothing non-finite is logged, kept or saved
                if step % train.log_every == 0 or done:
                    sums, _ = all_reduce_sums({"loss": float(running)}, 1)  # the ranks' parts
                    last_loss = sums["loss"] / count
                    logger.log(step, {"loss": last_loss, "lr": self.scheduler.get_last_lr()[0]})
                    running, count = 0.0, 0
                if evaluating:
                    self._evaluate_and_keep(step, logger)
                    stopped = not self._patience_left()
                    if stopped and main:
                        print(
                            f"early stopping at step {step}: validation {self.metric} has not "
                            f"improved for {self.bad_evaluations} evaluations"
                        )
                if done or stopped or saving:
                    self._checkpoint(step, self._state(running, count, last_loss))
                if done or stopped:
                    break
            epoch, skip = epoch + 1, 0
        final_dir = None
        if train.save_final or self.best_dir is None:
            final_dir = self.out_dir / "final"
            if main:
                self.folder.set_aside_results()
                save_finetuned(final_dir, self.model, self.task, step=step, metrics=self.validation)
        test = self._predict_test(self.best_dir) if main else None
        logger.close()
        result = FinetuneResult(
            self.out_dir,
            step,
            self.metric,
            self.best_value,
            self.best_step,
            self.best_dir,
            final_dir,
            self.validation,
            test,
            last_loss,
            time.perf_counter() - started,
            stopped,
        )
        if main:
            (self.out_dir / "results.json").write_text(
                json.dumps(_clean(result.to_dict()), indent=2, allow_nan=False)
            )
        barrier()  # the other ranks leave once rank 0 has written everything
        return result

    def _evaluate_and_keep(self, step: int, logger: MetricsLogger) -> None:
        """Evaluate on the validation rows; a new best by the chosen metric replaces
        ``best/``. An evaluation that does not beat the best by ``early_stopping_min_delta``
        counts towards early stopping."""
        # rank 0 evaluates (the plain model, alone); every rank takes its metrics, so that
        # the best step and early stopping are decided alike everywhere
        validation = self._evaluate(self.val_rows)[0] if is_main_process() else None
        self.validation = broadcast_object(validation)
        logger.log(step, self.validation, split="val")
        score = _score(self.validation, self.metric)
        first = self.best_step is None
        if first or score > self.best_score + self.config.train.early_stopping_min_delta:
            self.bad_evaluations = 0
        else:
            self.bad_evaluations += 1
        if first or score > self.best_score:
            self.best_score, self.best_step = score, step
            self.best_value = self.validation.get(self.metric)
            self.best_dir = self.out_dir / "best"
            if is_main_process():
                self.folder.set_aside_results()
                save_finetuned(
                    self.best_dir, self.model, self.task, step=step, metrics=self.validation
                )

    def _predict_test(self, best_dir: Path | None) -> dict[str, float] | None:
        """Predict the test file with the best model; its metrics when it has labels."""
        if not self.test_rows:
            return None
        if best_dir is not None:
            load_weights(self.model, best_dir / "model.safetensors")
        metrics, predictions = self._evaluate(self.test_rows)
        with (self.out_dir / "predictions.jsonl").open("w", encoding="utf-8") as out:
            for row, prediction in zip(self.test_rows, predictions, strict=True):
                record = {"source": row.source, "prediction": self.task.show(prediction)}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return metrics or None


def _clean(value: Any) -> Any:
    """Plain JSON data: NaN and infinities become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
