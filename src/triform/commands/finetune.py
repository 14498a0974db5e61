"""``triform finetune CONFIG.toml [--set section.key=value ...] [--resume RUN | --overwrite]``."""

from __future__ import annotations

import argparse

from triform.errors import TriformError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained model on a task (classification, tagging, QA, ...)",
        description="Fine-tune a pretrained body with a new head; see configs/finetune/.",
    )
    parser.add_argument("config", help="fine-tuning TOML ([model], [task], [train])")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set train.epochs=1",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue an interrupted run from its latest checkpoint (RUN: its folder, or "
        "one of its checkpoints/step-N folders); the run ends as if never interrupted",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in train.out_dir although it holds an earlier run: that run moves "
        "into previous-<time>/ (its best/, final/ and results.json once this run has its own)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triform.finetune import finetune
    from triform.runtime.distributed import is_main_process, shutdown_distributed

    if args.resume is not None and args.overwrite:
        raise TriformError("--resume continues the run in its folder; --overwrite starts afresh")
    result = finetune(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
    shutdown_distributed()  # under torchrun: leave the process group before exiting
    if is_main_process():  # rank 0 alone reports
        print(result.summary())
    return 0
