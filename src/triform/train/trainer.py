"""The one training loop: pretraining, continued pretraining, distillation and every kind of
fine-tuning run on :class:`Trainer`.

A run supplies only what is its own, as a :class:`TrainingRun`: its model, the micro-batches
of each optimizer step, the loss of a micro-batch with the counts of what it averages over,
evaluation (and what to do with its result: keep the best model, stop early), and what its
checkpoints carry. The Trainer owns everything around the step, written once for every run:

- the run folder's lock, the signals (SIGINT / SIGTERM checkpoint and end the run), the time
  budget (``max_minutes``), exact resume (weights, optimizer, schedule, RNG states, the data
  position and the run's own state);
- data parallelism (DDP / FSDP2), activation checkpointing, ``torch.compile``, the optimizer
  (fused AdamW where supported) and schedule;
- micro-batches and accumulation, autocast and the fp16 loss scaler, gradient sync, clipping,
  the NaN / infinity check (no host sync on ordinary steps);
- the cadence of logging, evaluation and checkpoints, and rank-0-only output.

**One loss, however the batch is split.** Every loss is a sum over what it counts (labelled
tokens, rows, ...) divided by the step's *global* count of them: before the first backward
of a step the Trainer sums each micro-batch's counts (:meth:`TrainingRun.counts`) over the
step's micro-batches and over the processes (one all-reduce per step), and hands the totals
to :meth:`TrainingRun.loss`, which returns the micro-batch's share of the step's loss. The
shares add up to the step's loss on one process, with ``grad_accum`` micro-batches and on N
processes alike (DDP and FSDP average gradients over processes, so a share is scaled by the
world size before its backward). See :func:`loss_share`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from triform.errors import ConfigError
from triform.runs import RunLock, latest_checkpoint
from triform.runtime.distributed import (
    all_reduce_sum_,
    all_reduce_sums,
    any_rank,
    checkpoint_blocks,
    gradient_sync,
    is_main_process,
    rank,
    world_size,
    wrap_model,
)
from triform.runtime.precision import autocast_context, grad_scaler
from triform.train.checkpoint import load_checkpoint, save_checkpoint
from triform.train.interrupt import Interrupted, StopSignals
from triform.train.metrics import MetricsLogger
from triform.train.steps import OptimizerStep

Batch = dict[str, torch.Tensor]
Counts = dict[str, torch.Tensor]  # loss term -> how many items it averages over (a () tensor)


def loss_share(
    mean: torch.Tensor, term: str, counts: Mapping[str, torch.Tensor], totals: Counts | None
) -> torch.Tensor:
    """A micro-batch's share of one loss term of its step.

    ``mean`` is the term averaged over the micro-batch's own ``counts[term]`` items; the
    share is their sum divided by the step's global count ``totals[term]``. Without
    ``totals`` (evaluation, one batch alone) the mean itself. No host sync.
    """
    if totals is None:
        return mean
    return mean * (counts[term] / totals[term].clamp(min=1))


def step_seed(seed: int, step: int, micro: int = 0, rank: int = 0, stream: int = 0) -> int:
    """A seed that is a function of (seed, step, micro-batch, rank, stream) only."""
    mixed = seed * 1_000_003 + step * 1009 + micro + rank * 999_983_011 + stream * 7_919_000_009
    return mixed % (2**63 - 1)


class TrainingRun:
    """What a run supplies to :class:`Trainer` (subclass it and implement the hooks).

    The Trainer calls, in order: :meth:`build_model` (before wrapping), :meth:`param_groups`
    (after wrapping), :meth:`restore` on resume, then for each step :meth:`micro_batches`,
    :meth:`counts` and :meth:`loss`, at evaluation steps :meth:`evaluate`, at checkpoints
    :meth:`state`, and at the end :meth:`finish`.
    """

    hint = "lower optim.lr"  # what to change when the loss becomes NaN
    unused_parameters = False  # some parameters get no gradient (DDP must be told)
    steps_per_epoch: int | None = None  # cadence 0 = at the end of every epoch

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Optimizer groups with their own ``lr`` (``None``: the usual decay split)."""
        return None

    def micro_batches(self, step: int) -> list[Batch]:
        """This process's micro-batches of optimizer step ``step`` (0-based), on the CPU."""
        raise NotImplementedError

    def counts(self, batch: Batch) -> Counts:
        """What each loss term of ``batch`` averages over (labelled tokens, rows, ...)."""
        raise NotImplementedError

    def loss(
        self, model: nn.Module, batch: Batch, totals: Counts
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's share of the step's loss (see :func:`loss_share`) and detached
        metrics of it (accuracy, loss parts)."""
        raise NotImplementedError

    def tokens_in(self, batch: Batch) -> int:
        """Tokens the model reads in ``batch`` (from shapes: no device sync)."""
        return int(batch["input_ids"].numel()) if "input_ids" in batch else 0

    def evaluate(self, model: nn.Module, wrapped: nn.Module, step: int) -> dict[str, float]:
        """Validation metrics at ``step`` (every process calls it)."""
        return {}

    def after_evaluation(
        self, step: int, metrics: dict[str, float], model: nn.Module, logger: MetricsLogger
    ) -> bool:
        """React to an evaluation (keep the best model, log a sample); True stops the run
        early (every process must answer alike)."""
        return False

    def data_position(self, step: int) -> dict[str, int]:
        """Where the data stream stands after ``step`` steps (saved with a checkpoint)."""
        return {"step": step}

    def check_data_position(self, saved: Any, step: int) -> None:
        """Refuse to resume when the data would not be read where the checkpoint stopped."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint carries besides tensors (plain data)."""
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back :meth:`state` from a checkpoint."""

    def stop_reason(self) -> str | None:
        """Why the run should not take another step (e.g. early stopping on resume)."""
        return None

    def tracked_config(self) -> dict[str, Any]:
        """The run config the trackers record (default: the run's ``config.to_dict()``)."""
        config = getattr(self, "config", None)
        return dict(config.to_dict()) if hasattr(config, "to_dict") else {}


@dataclass
class LoopSettings:
    """The keys of a ``[train]`` section the Trainer reads (a :class:`~triform.config.
    LoopSection` has them all)."""

    out_dir: Path
    steps: int
    grad_accum: int
    seed: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    keep_last: int
    max_minutes: float | None = None
    compile: bool = False
    parallel: str = "auto"
    activation_checkpointing: bool = False
    fsdp_param_dtype: str = "fp32"
    tensorboard: bool = True
    progress: bool = True
    report_to: tuple[str, ...] = ("tensorboard",)

    @classmethod
    def of(cls, train: Any) -> LoopSettings:
        """The settings of a ``[train]`` section (a :class:`~triform.config.LoopSection`)."""
        return cls(
            out_dir=Path(train.out_dir),
            steps=train.steps,
            grad_accum=train.grad_accum,
            seed=train.seed,
            log_every=train.log_every,
            eval_every=train.eval_every,
            checkpoint_every=train.checkpoint_every,
            keep_last=train.keep_last,
            max_minutes=train.max_minutes,
            compile=train.compile,
            parallel=train.parallel,
            activation_checkpointing=train.activation_checkpointing,
            fsdp_param_dtype=train.fsdp_param_dtype,
            tensorboard=train.tensorboard,
            progress=train.progress,
            report_to=tuple(train.report_to),
        )


@dataclass
class TrainResult:
    """What a run of the Trainer ended with."""

    steps: int
    train_loss: float
    validation: dict[str, float]
    checkpoint: Path | None
    tokens_per_second: float
    seconds: float
    stopped_early: bool = False
    out_of_time: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Runs a :class:`TrainingRun` to its last step (:meth:`fit`); see the module docstring.

    ``make_optimizer(model, groups)`` and ``make_scheduler(optimizer, total_steps)`` build
    the optimizer (after wrapping: FSDP shards the parameters) and schedule; ``device`` and
    ``precision`` are resolved; ``resume_from`` is a checkpoint folder.
    """

    def __init__(
        self,
        loop: LoopSettings,
        *,
        device: torch.device,
        precision: str,
        make_optimizer: Callable[[nn.Module, list | None], torch.optim.Optimizer],
        make_scheduler: Callable[[torch.optim.Optimizer, int], Any],
        grad_clip: float,
        resume_from: Path | None = None,
        banner: Callable[[nn.Module], str] | None = None,
    ) -> None:
        self.loop = loop
        self.device, self.precision = device, precision
        self.make_optimizer, self.make_scheduler = make_optimizer, make_scheduler
        self.grad_clip, self.resume_from, self.banner = grad_clip, resume_from, banner

    def fit(self, make_run: Callable[[], TrainingRun]) -> TrainResult:
        """Train the run that ``make_run`` builds, holding the run folder's lock (the run's
        own set-up of its folder, data and metadata happens in ``make_run``, under it)."""
        out_dir = self.loop.out_dir
        with RunLock(out_dir) if is_main_process() else contextlib.nullcontext():
            self.run = make_run()
            return self._fit()

    # ----------------------------------------------------------------------------------
    def _fit(self) -> TrainResult:
        loop, run = self.loop, self.run
        torch.manual_seed(loop.seed)
        model = run.build_model().to(self.device)
        self.model = model
        if loop.activation_checkpointing:
            checkpoint_blocks(model)  # before sharding, so FSDP wraps the checkpointed blocks
        wrapped = wrap_model(
            model,
            loop.parallel,
            find_unused_parameters=run.unused_parameters,
            param_dtype=torch.bfloat16 if loop.fsdp_param_dtype == "bf16" else None,
        )
        optimizer = self.make_optimizer(wrapped, run.param_groups(model))
        scheduler = self.make_scheduler(optimizer, loop.steps)
        start = 0
        if self.resume_from is not None:  # last, so the restored RNG state is used next
            state = load_checkpoint(self.resume_from, wrapped, optimizer, scheduler)
            start = state.step
            run.check_data_position(state.data_position, start)
            run.restore(state.extra)
            if is_main_process():
                print(f"resumed from step {start} of {loop.out_dir}")
            if start >= loop.steps:
                return _already_finished(state, loop.steps)
        if loop.compile:
            wrapped = torch.compile(wrapped)
        logger = MetricsLogger(
            loop.out_dir,
            loop.steps,
            enabled=is_main_process(),
            tensorboard=loop.tensorboard,
            progress=loop.progress,
            initial_step=start,
            report_to=loop.report_to,
            run_config=run.tracked_config() if is_main_process() else None,
        )
        if self.banner is not None and is_main_process():
            print(self.banner(model))
        try:
            with StopSignals() as signals:
                return self._steps(model, wrapped, optimizer, scheduler, logger, start, signals)
        finally:
            logger.close()

    def _every(self, step: int, every: int) -> bool:
        """Whether a cadence of ``every`` steps falls on ``step`` (0: end of each epoch)."""
        if every > 0:
            return step % every == 0
        per_epoch = self.run.steps_per_epoch
        return bool(per_epoch) and step % per_epoch == 0

    def _step_totals(self, batches: list[Batch]) -> Counts:
        """The step's global counts of every loss term: summed over its micro-batches here
        and over the processes (one all-reduce)."""
        per_batch = [self.run.counts(b) for b in batches]
        names = sorted(per_batch[0])
        local = torch.stack(
            [sum(c[name].to(self.device, torch.float64) for c in per_batch) for name in names]
        )
        return dict(zip(names, all_reduce_sum_(local).unbind(0), strict=True))

    def _steps(self, model, wrapped, optimizer, scheduler, logger, start, signals) -> TrainResult:
        loop, run, device, precision = self.loop, self.run, self.device, self.precision
        out_dir = loop.out_dir
        started = time.perf_counter()
        window_start, window_tokens, total_tokens = started, 0, 0
        running = torch.zeros((), device=device, dtype=torch.float64)
        running_steps = 0
        last_loss, validation = math.nan, {}
        step = start
        checkpoint = latest_checkpoint(out_dir)
        scaler = grad_scaler(precision, device)
        finish_step = OptimizerStep(wrapped, optimizer, scheduler, scaler, self.grad_clip, run.hint)
        world = world_size()
        stopped_early = run.stop_reason() is not None
        out_of_time = False
        if stopped_early and is_main_process():
            print(run.stop_reason())
        wrapped.train()
        while step < loop.steps and not stopped_early:
            # Dropout draws from the global RNG: seeded per (step, rank), so that ranks drop
            # different units and a resumed run draws the same.
            torch.manual_seed(step_seed(loop.seed, step, rank=rank(), stream=1))
            batches = [
                {k: v.to(device, non_blocking=True) for k, v in b.items()}
                for b in run.micro_batches(step)
            ]
            totals = self._step_totals(batches)
            step_loss = torch.zeros((), device=device, dtype=torch.float64)
            for index, batch in enumerate(batches):
                with gradient_sync(wrapped, index == len(batches) - 1):
                    with autocast_context(precision, device):
                        loss, _ = run.loss(wrapped, batch, totals)
                    scaler.scale(loss * world).backward()
                step_loss += loss.detach()
                tokens = run.tokens_in(batch)
                window_tokens += tokens
                total_tokens += tokens
            step += 1
            finish_step.watch(step_loss, step)
            finish_step(step)
            running += step_loss
            running_steps += 1
            if loop.compile and step == start + 1 and is_main_process():
                _report_compile(time.perf_counter() - started)

            if loop.max_minutes is not None:  # every rank stops at the same step
                spent = time.perf_counter() - started > 60 * loop.max_minutes
                out_of_time = all_reduce_sums({}, float(spent))[1] > 0
            done = step >= loop.steps
            logging = step % loop.log_every == 0 or done
            evaluating = self._every(step, loop.eval_every) or done or out_of_time
            saving = self._every(step, loop.checkpoint_every) or done or out_of_time
            if logging or evaluating or saving:
                finish_step.check()  # the one host sync of such a step; none on the others
            if logging:
                # the shares of every process add up to the global loss: one collective
                sums, _ = all_reduce_sums(
                    {"loss": float(running), "tokens": window_tokens}, running_steps
                )
                last_loss = sums["loss"] / running_steps
                now = time.perf_counter()
                rate = sums["tokens"] / max(now - window_start, 1e-9)
                logger.log(
                    step,
                    {"loss": last_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate},
                    split="train",
                )
                running.zero_()
                running_steps, window_start, window_tokens = 0, now, 0
            if evaluating:
                validation = run.evaluate(model, wrapped, step)
                if validation:
                    logger.log(step, validation, split="val")
                stopped_early = run.after_evaluation(step, validation, model, logger)
                wrapped.train()
            stopping = any_rank(signals.received is not None)  # every rank stops at one step
            if stopping and not saving:
                finish_step.check()
            if saving or stopping or stopped_early:
                checkpoint = save_checkpoint(  # every rank: FSDP saves its shards
                    out_dir,
                    step,
                    model,
                    optimizer,
                    scheduler,
                    extra={"val": validation, "train_loss": last_loss, **run.state()},
                    keep_last=loop.keep_last,
                    data_position=run.data_position(step),
                )
            if stopping:
                raise Interrupted(signals.received or signal.SIGTERM, step, checkpoint, out_dir)
            if out_of_time:
                break
        total_tokens = all_reduce_sums({}, total_tokens)[1]  # every rank's tokens
        elapsed = time.perf_counter() - started
        return TrainResult(
            step,
            last_loss,
            validation,
            checkpoint,
            total_tokens / max(elapsed, 1e-9),
            elapsed,
            stopped_early=stopped_early and step < loop.steps,
            out_of_time=out_of_time,
        )


def _already_finished(state: Any, steps: int) -> TrainResult:
    """The result of a run resumed at or past its last step: what its checkpoint recorded."""
    if is_main_process():
        print(f"the run already reached step {state.step} (train.steps = {steps}): nothing to do")
    extra = state.extra or {}
    return TrainResult(
        state.step,
        float(extra.get("train_loss") or math.nan),
        dict(extra.get("val") or {}),
        state.path,
        0.0,
        0.0,
        extra=dict(extra),
    )


def _report_compile(seconds: float) -> None:
    """The first step of a compiled model includes compiling it: say how long it took, and
    where the compiled graphs are cached (a rerun of the same model reads them back)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    print(f"first step {seconds:.1f} s, compiling included (torch.compile; cache: {cache_dir()})")


def check_data_samples(saved: Any, step: int, batch_size: int) -> None:
    """A resumed run must read the data where the checkpoint stopped: refuse a changed
    global batch (which would move every later step's rows)."""
    if not isinstance(saved, dict) or "samples" not in saved:
        return  # checkpoints from before data positions were saved: step is the position
    if saved["samples"] != step * batch_size:
        raise ConfigError(
            f"the checkpoint at step {step} has read {saved['samples']} samples with "
            f"train.batch_size {saved.get('batch_size')}; resume with that global batch size, "
            f"not {batch_size}"
        )
