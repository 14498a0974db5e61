"""The fine-tuning loop: pretrained body + new head, every parameter trained.

The body learns at ``train.body_lr`` and the head at ``train.lr`` (AdamW, weight decay on
weights only, as in pretraining); the learning rate warms up then decays linearly (or by
cosine) to zero. The model is evaluated after every epoch (or every ``eval_every`` steps);
the best evaluation by ``task.metric`` is kept in ``best/`` and the last state in
``final/``. A test file, when given, is predicted with the best model into
``predictions.jsonl`` (and scored if it has labels). ``results.json`` sums the run up.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from triform.errors import TriformError
from triform.finetune.body import load_body
from triform.finetune.config import FinetuneConfig, higher_is_better, load_finetune_config
from triform.finetune.data import Row, read_rows
from triform.finetune.saved import save_finetuned
from triform.finetune.tasks import FinetuneModel, Task, build_task, evaluate
from triform.finetune.tasks.base import to_device
from triform.runs import load_weights
from triform.runtime.device import pick_device
from triform.runtime.precision import autocast_context, grad_scaler, resolve_precision
from triform.train.metrics import MetricsLogger
from triform.train.optim import OptimConfig, clip_gradients, decay_split
from triform.train.schedules import ScheduleConfig, build_scheduler


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

    def summary(self) -> str:
        """One line: the chosen metric at its best, where the model is."""
        best = "n/a" if self.best_value is None else f"{self.best_value:.4g}"
        where = self.best_dir or self.final_dir
        line = (
            f"done: {self.steps} steps in {self.seconds:.0f}s, train loss {self.train_loss:.4f}; "
            f"best validation {self.metric} {best} (step {self.best_step}); model: {where}"
        )
        if self.test:
            line += "; test " + ", ".join(f"{k} {v:.4g}" for k, v in self.test.items())
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
    config: FinetuneConfig | str | Path, overrides: list[str] | None = None
) -> FinetuneResult:
    """Fine-tune as ``config`` (a :class:`FinetuneConfig` or a TOML path) says."""
    if isinstance(config, FinetuneConfig):
        if overrides:
            config = load_finetune_config(tree=config.to_dict(), overrides=overrides)
    else:
        config = load_finetune_config(config, overrides)
    threads = torch.get_num_threads()
    try:
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        return Finetuner(config).run()
    finally:
        torch.set_num_threads(threads)  # the thread count is process-wide: put it back


class Finetuner:
    """One fine-tuning run: set-up in ``__init__``, the loop in :meth:`run`."""

    def __init__(self, config: FinetuneConfig) -> None:
        self.config = config
        train = config.train
        self.device = pick_device(train.device)
        self.precision = resolve_precision(train.precision, self.device)
        torch.manual_seed(train.seed)
        self.out_dir = Path(train.out_dir)
        self.metric = config.metric

        task_cfg = config.task
        self.train_rows = _read(task_cfg.train, task_cfg.format)
        self.val_rows = _read(task_cfg.validation, task_cfg.format)
        self.test_rows = _read(task_cfg.test, task_cfg.format)
        body, tokenizer = load_body(config.model)
        self.task: Task = build_task(task_cfg, tokenizer, body.config)
        self.task.setup(self.train_rows)
        self.task.prepare_body(body)
        torch.manual_seed(train.seed)  # the head's init does not depend on how the body loaded
        self.model = FinetuneModel(body, self.task.build_head(body)).to(self.device)
        self.features = self.task.encode(self.train_rows, training=True)
        if not self.features:
            raise TriformError(f"{task_cfg.train}: no training examples")
        per_epoch = math.ceil(len(self.features) / train.batch_size)
        self.total_steps = train.steps if train.steps is not None else train.epochs * per_epoch
        body_lr = train.body_lr if train.body_lr is not None else train.lr
        groups = param_groups(self.model, train.lr, body_lr, train.weight_decay)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(groups, lr=train.lr, **fused)
        warmup = train.warmup_steps
        if warmup is None:
            warmup = int(train.warmup_ratio * self.total_steps)
        schedule = ScheduleConfig(kind=train.schedule, warmup_steps=warmup, min_lr_ratio=0.0)
        self.scheduler = build_scheduler(self.optimizer, schedule, self.total_steps)
        # the evaluations so far: the last one's metrics, the best one and where it is kept
        self.validation: dict[str, float] = {}
        self.best_score = -math.inf
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_dir: Path | None = None

    # ----------------------------------------------------------------------------------
    def _evaluate(self, rows: list[Row]) -> tuple[dict[str, float], list[Any]]:
        size = self.config.train.eval_batch_size or self.config.train.batch_size
        return evaluate(self.task, self.model, rows, size, self.device, self.precision)

    def _batches(self, epoch: int) -> list[list[dict]]:
        size = self.config.train.batch_size
        generator = torch.Generator().manual_seed(self.config.train.seed * 1009 + epoch)
        order = torch.randperm(len(self.features), generator=generator).tolist()
        return [
            [self.features[i] for i in order[start : start + size]]
            for start in range(0, len(order), size)
        ]

    def run(self) -> FinetuneResult:
        cfg, train = self.config, self.config.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "finetune_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        logger = MetricsLogger(
            self.out_dir, self.total_steps, tensorboard=train.tensorboard, progress=train.progress
        )
        body = self.model.body
        print(
            f"fine-tuning {body.config.family} {body.config.form} "
            f"({self.model.body.num_parameters():,} + "
            f"{sum(p.numel() for p in self.model.head.parameters()):,} head parameters) for "
            f"{self.task.kind} on {len(self.train_rows)} examples: {self.total_steps} steps "
            f"of {train.batch_size} on {self.device} ({self.precision})"
        )
        for stale in ("best", "final"):  # an earlier run's models must not pass for this one's
            shutil.rmtree(self.out_dir / stale, ignore_errors=True)
        started = time.perf_counter()
        scaler = grad_scaler(self.precision, self.device)
        running, count, last_loss = 0.0, 0, math.nan
        step, epoch = 0, 0
        self.model.train()
        while step < self.total_steps:
            batches = self._batches(epoch)
            for index, features in enumerate(batches):
                batch = to_device(self.task.collate(features), self.device)
                with autocast_context(self.precision, self.device):
                    loss = self.task.loss(self.model, batch)
                scaler.scale(loss).backward()
                scaler.unscale_(self.optimizer)
                clip_gradients(self.model, train.grad_clip)
                scaler.step(self.optimizer)
                scaler.update()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                running += loss.detach()
                count += 1
                done = step >= self.total_steps
                if step % train.log_every == 0 or done:
                    last_loss = float(running) / count
                    if not math.isfinite(last_loss):
                        raise TriformError(
                            f"loss became {last_loss} at step {step}; lower train.lr"
                        )
                    logger.log(step, {"loss": last_loss, "lr": self.scheduler.get_last_lr()[0]})
                    running, count = 0.0, 0
                end_of_epoch = index == len(batches) - 1
                if self.val_rows and (
                    done
                    or (train.eval_every and step % train.eval_every == 0)
                    or (not train.eval_every and end_of_epoch)
                ):
                    self._evaluate_and_keep(step, logger)
                if done:
                    break
            epoch += 1
        final_dir = None
        if train.save_final or self.best_dir is None:
            final_dir = save_finetuned(
                self.out_dir / "final", self.model, self.task, step=step, metrics=self.validation
            )
        test = self._predict_test(self.best_dir)
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
        )
        (self.out_dir / "results.json").write_text(
            json.dumps(_clean(result.to_dict()), indent=2, allow_nan=False)
        )
        return result

    def _evaluate_and_keep(self, step: int, logger: MetricsLogger) -> None:
        """Evaluate on the validation rows; a new best by the chosen metric replaces
        ``best/``."""
        self.validation, _ = self._evaluate(self.val_rows)
        logger.log(step, self.validation, split="val")
        score = _score(self.validation, self.metric)
        if self.best_step is None or score > self.best_score:
            self.best_score, self.best_step = score, step
            self.best_value = self.validation.get(self.metric)
            self.best_dir = save_finetuned(
                self.out_dir / "best", self.model, self.task, step=step, metrics=self.validation
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
