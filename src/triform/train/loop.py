"""The pretraining loop: the short piece that ties the components together.

text -> tokenizer -> shards -> task (reader + objective + loss) -> model -> optimizer ->
checkpoints and metrics. Everything specific to an objective lives in its module of
:mod:`triform.objectives`; this loop is the same for all of them.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from triform.errors import ConfigError
from triform.objectives import PretrainingTask, RunData, build_objective_for_run
from triform.outputs import check_run_folder, claim_run_folder, same_file
from triform.runs import (
    latest_checkpoint,
    resolve_checkpoint,
    write_run_metadata,
)
from triform.runtime.allocator import apply_process_settings
from triform.runtime.device import pick_device
from triform.runtime.distributed import (
    all_reduce_sums,
    any_rank,
    checkpoint_blocks,
    gradient_sync,
    init_distributed,
    is_fsdp,
    is_main_process,
    rank,
    split_batch,
    world_size,
    wrap_model,
)
from triform.runtime.memory import check_model_fits
from triform.runtime.precision import (
    autocast_context,
    grad_scaler,
    precision_reason,
    resolve_precision,
)
from triform.train.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from triform.train.interrupt import Interrupted, StopSignals
from triform.train.metrics import MetricsLogger
from triform.train.optim import build_optimizer
from triform.train.run_config import RunConfig
from triform.train.schedules import build_scheduler
from triform.train.setup import (
    check_positions,
    check_resume,
    prepare_data,
    prepare_tokenizer,
    resolve_model_config,
    save_run_tokenizer,
    set_aside_newer_checkpoints,
)
from triform.train.steps import OptimizerStep


@dataclass
class PretrainResult:
    """What a finished run reports."""

    out_dir: Path
    steps: int
    train_loss: float
    val_metrics: dict[str, float]
    checkpoint: Path
    tokens_per_second: float
    sample: str | None = None


def step_seed(seed: int, step: int, micro: int = 0, rank: int = 0, stream: int = 0) -> int:
    """A seed that is a function of (seed, step, micro-batch, rank, stream) only."""
    mixed = seed * 1_000_003 + step * 1009 + micro + rank * 999_983_011 + stream * 7_919_000_009
    return mixed % (2**63 - 1)


def step_generator(seed: int, step: int, micro: int, rank: int = 0) -> torch.Generator:
    """The objective's random stream for one rank's micro-batch: a function of (seed, step,
    micro, rank) only, so a resumed run draws exactly the same masks and spans, and ranks
    draw independent ones for their different rows."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(step_seed(seed, step, micro, rank))
    return generator


def data_position(step: int, batch_size: int) -> dict[str, int]:
    """Where the data stream stands after ``step`` optimizer steps, in global samples (the
    same on any number of processes)."""
    return {"samples": step * batch_size, "batch_size": batch_size}


def _check_data_position(saved, step: int, batch_size: int) -> None:
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


def pretrain(
    config: RunConfig,
    resume: str | Path | None = None,
    force: bool = False,
    overwrite: bool = False,
) -> PretrainResult:
    """Run (or resume) the pretraining described by ``config``.

    Everything that can be checked is checked before the run folder is touched: the config,
    the objective's keys against the tokenizer, the model's size against free memory, and
    for a resume that the run holds the same model and tokenizer. Resuming from a checkpoint
    older than the run's latest is refused unless ``force`` (the newer ones are then moved to
    ``checkpoints/abandoned-<time>/``, never mixed with the new branch). A folder that
    holds an earlier run is refused unless it is resumed or ``overwrite`` (that run is then
    moved aside into ``previous-<time>/``, see :func:`triform.outputs.claim_run_folder`).
    """
    train = config.train
    init_distributed()
    split_batch(train.batch_size, train.grad_accum)  # refuse an uneven split before any work
    device = pick_device(train.device)
    precision = resolve_precision(train.precision, device)
    apply_process_settings(train.threads, train.keep_freed_memory)
    out_dir = Path(train.out_dir)
    resume_from = resolve_checkpoint(resume) if resume is not None else None
    here = resume_from is not None and same_file(resume_from.parent.parent, out_dir)
    data = config.data
    corpus = [path for path in data.corpus if path != "default"]
    validation = [data.validation] if isinstance(data.validation, str) else data.validation
    check_run_folder(
        out_dir,
        "pretrain",
        overwrite=overwrite,
        resume=here,
        inputs=[data.sources],
        sources=[*corpus, *(validation or [])],
    )

    tokenizer, tokenizer_files = prepare_tokenizer(config, out_dir, fresh=overwrite and not here)
    model_config = resolve_model_config(config, tokenizer)
    objective, model_config = build_objective_for_run(config, model_config, tokenizer)
    check_positions(config, objective, model_config)
    check_model_fits(model_config, device, use="training")
    if resume_from is not None:
        check_resume(resume_from.parent.parent, model_config, tokenizer)

    claim = claim_run_folder if is_main_process() else lambda *a, **k: contextlib.nullcontext()
    with claim(out_dir, "pretrain", overwrite=overwrite, resume=here):
        if is_main_process():
            if resume_from is not None:
                set_aside_newer_checkpoints(out_dir, resume_from, force)
            prune_checkpoints(out_dir, train.keep_last, keep=resume_from)
        save_run_tokenizer(tokenizer, tokenizer_files)
        shards = prepare_data(config, tokenizer, out_dir, overwrite=overwrite)
        task = PretrainingTask(objective, model_config, RunData.of(config, tokenizer, shards))
        torch.manual_seed(train.seed)
        model = task.build_model().to(device)
        if is_main_process():
            write_run_metadata(out_dir, config.to_dict(), model_config, model)

        if train.activation_checkpointing:
            checkpoint_blocks(model)  # before sharding, so FSDP wraps the checkpointed blocks
        wrapped = wrap_model(
            model,
            train.parallel,
            find_unused_parameters=task.unused_parameters,
            param_dtype=torch.bfloat16 if train.fsdp_param_dtype == "bf16" else None,
        )
        optimizer = build_optimizer(wrapped, config.optim)  # after wrapping: FSDP shards params
        scheduler = build_scheduler(optimizer, config.schedule, train.steps)
        start_step, resumed = 0, None
        if resume_from is not None:  # last, so the restored RNG state is the next thing used
            resumed = load_checkpoint(resume_from, wrapped, optimizer, scheduler)
            start_step = resumed.step
            _check_data_position(resumed.data_position, start_step, train.batch_size)
            if is_main_process():
                print(f"resumed from step {start_step}")
        if start_step >= train.steps:
            return _already_finished(out_dir, resumed, train.steps)
        if train.compile:
            wrapped = torch.compile(wrapped)

        logger = MetricsLogger(
            out_dir,
            train.steps,
            enabled=is_main_process(),
            tensorboard=train.tensorboard,
            progress=train.progress,
            initial_step=start_step,
        )
        if is_main_process():
            print(
                f"{model_config.family} {model_config.form}: {model.num_parameters():,} "
                f"parameters, objective {task.name}, {train.steps} steps of {train.batch_size} "
                f"sequences ({_split_text(train.batch_size, train.grad_accum)}) on {device} "
                f"({precision}"
                + (f", {precision_reason(device)})" if train.precision == "auto" else ")")
            )
        try:
            with StopSignals() as signals:
                return _run_steps(
                    config,
                    task,
                    model,
                    wrapped,
                    optimizer,
                    scheduler,
                    logger,
                    device,
                    precision,
                    start_step,
                    signals,
                )
        finally:
            logger.close()


def _split_text(batch_size: int, grad_accum: int) -> str:
    """How the global batch is split, e.g. ``2 processes x 2 micro-batches x 4``."""
    world = world_size()
    parts = [f"{world} processes"] if world > 1 else []
    parts += [f"{grad_accum} micro-batches"] if grad_accum > 1 else []
    return " x ".join([*parts, str(split_batch(batch_size, grad_accum))])


def _already_finished(out_dir: Path, state, steps: int) -> PretrainResult:
    """The result of a run resumed at or past its last step: what its checkpoint recorded."""
    if is_main_process():
        print(f"the run already reached step {state.step} (train.steps = {steps}): nothing to do")
    extra = state.extra or {}
    return PretrainResult(
        out_dir,
        state.step,
        float(extra.get("train_loss") or math.nan),
        dict(extra.get("val") or {}),
        state.path,
        0.0,
    )


def _report_compile(seconds: float) -> None:
    """The first step of a compiled model includes compiling it: say how long it took, and
    where the compiled graphs are cached (a rerun of the same model reads them back)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    print(f"first step {seconds:.1f} s, compiling included (torch.compile; cache: {cache_dir()})")


def _run_steps(
    config,
    task: PretrainingTask,
    model,
    wrapped,
    optimizer,
    scheduler,
    logger,
    device,
    precision: str,
    start_step: int,
    signals: StopSignals,
) -> PretrainResult:
    train = config.train
    out_dir = Path(train.out_dir)
    started = time.perf_counter()
    window_start, window_tokens, total_tokens = started, 0, 0
    running_loss = torch.zeros((), device=device)
    running_count = 0
    last_loss, val_metrics, sample = math.nan, {}, None
    step = start_step
    checkpoint = latest_checkpoint(out_dir)
    scaler = grad_scaler(precision, device)
    finish_step = OptimizerStep(
        wrapped, optimizer, scheduler, scaler, config.optim.grad_clip, hint="lower optim.lr"
    )
    wrapped.train()
    while step < train.steps:
        # Dropout draws from the global RNG: seeded per (step, rank), so that ranks drop
        # different units and a run resumed on any number of processes draws the same.
        torch.manual_seed(step_seed(train.seed, step, rank=rank(), stream=1))
        for micro in range(train.grad_accum):
            index = step * train.grad_accum + micro
            draw = step_generator(train.seed, step, micro, rank())
            batch = task.train_batch(index, draw)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with gradient_sync(wrapped, micro == train.grad_accum - 1):
                with autocast_context(precision, device):
                    loss, _ = task.loss(wrapped, batch, draw)
                scaler.scale(loss / train.grad_accum).backward()
            finish_step.watch(loss, step + 1)
            running_loss += loss.detach()
            running_count += 1
            tokens = task.tokens_in(batch)
            window_tokens += tokens
            total_tokens += tokens
        step += 1
        finish_step(step)
        if train.compile and step == start_step + 1 and is_main_process():
            _report_compile(time.perf_counter() - started)

        out_of_time = train.max_minutes is not None and (
            time.perf_counter() - started > 60 * train.max_minutes
        )
        if train.max_minutes is not None:  # every rank stops at the same step
            out_of_time = all_reduce_sums({}, float(out_of_time))[1] > 0
        logging = step % train.log_every == 0 or step == train.steps
        evaluating = step % train.eval_every == 0 or step == train.steps or out_of_time
        saving = step % train.checkpoint_every == 0 or step == train.steps or out_of_time
        if logging or evaluating or saving:
            finish_step.check()  # the one host sync of such a step; none on the others
        if logging:
            local = (running_loss / running_count).item()
            # The global batch's loss and token count: one collective at logging steps.
            sums, ranks = all_reduce_sums({"loss": local, "tokens": window_tokens}, 1)
            last_loss = sums["loss"] / ranks
            now = time.perf_counter()
            rate = sums["tokens"] / max(now - window_start, 1e-9)
            logger.log(
                step,
                {"loss": last_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate},
                split="train",
            )
            running_loss.zero_()
            running_count, window_start, window_tokens = 0, now, 0

        if evaluating:
            # eval_batches counts global batches; the readers serve micro-batches
            batches = train.eval_batches * train.grad_accum
            val_metrics = task.evaluate(wrapped, device, precision, batches)
            logger.log(step, val_metrics, split="val")
            # Rank 0 samples; under FSDP every rank must run the (collective) forward passes.
            sampling = task.can_sample and (is_main_process() or is_fsdp(model))
            if sampling and train.sample_tokens > 0:
                sample = task.sample(model, device, train.sample_tokens, train.sample_prompt)
                logger.text(step, "sample", sample)
            wrapped.train()
        stopping = any_rank(signals.received is not None)  # every rank stops at one step
        if stopping and not saving:
            finish_step.check()
        if saving or stopping:
            checkpoint = save_checkpoint(  # every rank: FSDP saves its shards
                out_dir,
                step,
                model,
                optimizer,
                scheduler,
                extra={"val": val_metrics, "train_loss": last_loss},
                keep_last=train.keep_last,
                data_position=data_position(step, train.batch_size),
            )
        if stopping:
            raise Interrupted(signals.received or signal.SIGTERM, step, checkpoint, out_dir)
        if out_of_time:
            break
    total_tokens = all_reduce_sums({}, total_tokens)[1]  # every rank's tokens
    elapsed = time.perf_counter() - started
    return PretrainResult(
        out_dir,
        step,
        last_loss,
        val_metrics,
        checkpoint,
        total_tokens / max(elapsed, 1e-9),
        sample,
    )
