"""Pretraining: a run config turned into a :class:`PretrainingRun` that the one
:class:`~triform.train.trainer.Trainer` drives.

text -> tokenizer -> shards -> task (reader + objective + loss) -> model -> Trainer ->
checkpoints and metrics. Everything specific to an objective lives in its module of
:mod:`triform.objectives`; everything around the step lives in the Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from triform.errors import TriformError
from triform.models.sizing import check_model_fits
from triform.objectives import build_objective_for_run
from triform.outputs import check_run_folder, prepare_run_folder, same_file
from triform.runs import STATE_JSON, read_run_init, resolve_checkpoint, write_run_metadata
from triform.runtime.allocator import apply_process_settings
from triform.runtime.device import pick_device
from triform.runtime.distributed import (
    init_distributed,
    is_fsdp,
    is_main_process,
    split_batch,
    world_size,
)
from triform.runtime.precision import precision_reason, resolve_precision
from triform.train.checkpoint import prune_checkpoints
from triform.train.init import InitPlan, plan_init
from triform.train.optim import build_optimizer
from triform.train.run_config import RunConfig
from triform.train.schedules import build_scheduler
from triform.train.setup import (
    check_positions,
    check_resume,
    check_sampling,
    prepare_data,
    prepare_tokenizer,
    resolve_model_config,
    save_run_tokenizer,
    set_aside_newer_checkpoints,
)
from triform.train.task import PretrainingTask, RunData
from triform.train.trainer import (
    LoopSettings,
    Trainer,
    TrainingRun,
    check_data_samples,
)


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


def data_position(step: int, batch_size: int) -> dict[str, int]:
    """Where the data stream stands after ``step`` optimizer steps, in global samples (the
    same on any number of processes)."""
    return {"samples": step * batch_size, "batch_size": batch_size}


class PretrainingRun(TrainingRun):
    """A pretraining run as the :class:`~triform.train.trainer.Trainer` drives it: the
    objective's batches and loss, validation (and a text sample for generative
    objectives)."""

    def __init__(
        self,
        config: RunConfig,
        task: PretrainingTask,
        device,
        precision: str,
        init: InitPlan | None = None,
        init_record: dict | None = None,
    ) -> None:
        self.config, self.task = config, task
        self.device, self.precision = device, precision
        self.unused_parameters = task.unused_parameters
        self.sample: str | None = None
        self.init, self.init_record = init, init_record

    def build_model(self) -> nn.Module:
        """The objective's model; a run from a checkpoint (``model.init``) then gets the
        checkpoint's weights (:class:`~triform.train.init.InitPlan`), and ``run.json``
        records where they came from."""
        model = self.task.build_model()
        if self.init is not None:
            self.init.apply(model)
        if is_main_process():
            run = self.config.to_dict()
            if self.init_record is not None:
                run = {**run, "init": self.init_record}
            write_run_metadata(self.config.train.out_dir, run, self.task.model_config, model)
        return model

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of ``step``; each row's masks and spans are drawn from
        its global sample index (see :class:`~triform.objectives.ops.SampleDraws`), so the
        same sample is treated alike however the batch is split."""
        accum = self.config.train.grad_accum
        return [self.task.train_batch(step * accum + micro) for micro in range(accum)]

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.task.objective.counts(batch)

    def loss(self, model, batch, totals):
        return self.task.loss(model, batch, totals=totals)

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        return self.task.tokens_in(batch)

    def evaluate(self, model: nn.Module, wrapped: nn.Module, step: int) -> dict[str, float]:
        batches = self.config.train.eval_batches
        return self.task.evaluate(wrapped, self.device, self.precision, batches)

    def after_evaluation(self, step, metrics, model, logger) -> bool:
        train = self.config.train
        # Rank 0 samples; under FSDP every rank must run the (collective) forward passes.
        sampling = self.task.can_sample and (is_main_process() or is_fsdp(model))
        if sampling and train.sample_tokens > 0:
            self.sample = self.task.sample(
                model, self.device, train.sample_tokens, train.sample_prompt
            )
            logger.text(step, "sample", self.sample)
        return False

    def data_position(self, step: int) -> dict[str, int]:
        return data_position(step, self.config.train.batch_size)

    def check_data_position(self, saved, step: int) -> None:
        check_data_samples(saved, step, self.config.train.batch_size)


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
    moved aside into ``previous-<time>/``, see :func:`triform.outputs.prepare_run_folder`).
    """
    train = config.train
    init_distributed()
    split_batch(train.batch_size, train.grad_accum)  # refuse an uneven split before any work
    device = pick_device(train.device)
    precision = resolve_precision(train.precision, device)
    apply_process_settings(train.threads, train.keep_freed_memory)
    out_dir = Path(train.out_dir)
    resume_from = _resume_checkpoint(resume) if resume is not None else None
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
    check_sampling(config, objective, model_config, tokenizer)
    check_model_fits(model_config, device, use="training")
    if resume_from is not None:
        check_resume(resume_from.parent.parent, model_config, tokenizer)
    init, init_record = None, None
    if config.init.init is not None and resume_from is None:  # a fresh run from a checkpoint
        with torch.device("meta"):  # names and shapes only
            planned = objective.build_model(model_config)
        init = plan_init(
            config.init.init,
            planned,
            tokenizer,
            config.tokenizer.path,
            config.init.resize_vocab,
            objective.name,
        )
        init_record = init.record
        if is_main_process():
            print(init.line)
    elif config.init.init is not None:  # resumed: where it started is already recorded
        init_record = read_run_init(resume_from.parent.parent)

    def make_run() -> PretrainingRun:  # under the run folder's lock
        if is_main_process():  # an earlier run is moved aside, never mixed with this one
            prepare_run_folder(out_dir, "pretrain", overwrite=overwrite, resume=here)
            if resume_from is not None:
                set_aside_newer_checkpoints(out_dir, resume_from, force)
            prune_checkpoints(out_dir, train.keep_last, keep=resume_from)
        save_run_tokenizer(tokenizer, tokenizer_files)
        shards = prepare_data(config, tokenizer, out_dir, overwrite=overwrite)
        task = PretrainingTask(objective, model_config, RunData.of(config, tokenizer, shards))
        return PretrainingRun(config, task, device, precision, init, init_record)

    def banner(model: nn.Module) -> str:
        return (
            f"{model_config.family} {model_config.form}: {model.num_parameters():,} "
            f"parameters, objective {objective.name}, {train.steps} steps of "
            f"{train.batch_size} sequences ({_split_text(train.batch_size, train.grad_accum)}) "
            f"on {device} ({precision}"
            + (f", {precision_reason(device)})" if train.precision == "auto" else ")")
        )

    trainer = Trainer(
        LoopSettings.of(train),
        device=device,
        precision=precision,
        make_optimizer=lambda model, groups: build_optimizer(model, config.optim),
        make_scheduler=lambda opt, steps: build_scheduler(opt, config.schedule, steps),
        grad_clip=config.optim.grad_clip,
        resume_from=resume_from,
        banner=banner,
    )
    result = trainer.fit(make_run)
    return PretrainResult(
        out_dir,
        result.steps,
        result.train_loss,
        result.validation,
        result.checkpoint,
        result.tokens_per_second,
        getattr(trainer.run, "sample", None),
    )


def _resume_checkpoint(resume: str | Path) -> Path:
    """The checkpoint ``--resume`` names; a folder without one (a HuggingFace checkpoint, a
    model folder) is refused with the key that starts a run from its weights."""
    hint = f"to start a new run from its weights, set model.init = {str(resume)!r}"
    try:
        checkpoint = resolve_checkpoint(resume)
    except TriformError as err:
        if not Path(resume).is_dir():
            raise
        raise TriformError(f"{err}: --resume continues a run; {hint}") from None
    if not (checkpoint / STATE_JSON).is_file():  # weights alone: a model or HF folder
        raise TriformError(f"cannot resume {resume}: it is not a run folder; {hint}")
    return checkpoint


def _split_text(batch_size: int, grad_accum: int) -> str:
    """How the global batch is split, e.g. ``2 processes x 2 micro-batches x 4``."""
    world = world_size()
    parts = [f"{world} processes"] if world > 1 else []
    parts += [f"{grad_accum} micro-batches"] if grad_accum > 1 else []
    return " x ".join([*parts, str(split_batch(batch_size, grad_accum))])
