"""``triform predict RUN --input FILE [--out FILE]``: a fine-tuned model's predictions, with
their scores, for every row of a CSV, TSV or JSONL file, one JSON object a line."""

from __future__ import annotations

import argparse
import json
import sys

from triform.commands import add_overwrite_option, check_output
from triform.errors import TriformError
from triform.finetune.data import FORMATS
from triform.outputs import write_output

# The input columns a task may read, each settable with --COLUMN NAME (default: the run's).
COLUMNS = ("text", "text_pair", "tokens", "question", "context", "source", "prefix", "choices")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict with a fine-tuned model: labels, values, tags, answers or text, as JSONL",
        description="Predict every row of --input (CSV, TSV or JSONL, with the columns the "
        "run was trained on) and write one JSON object per row: the row's source (file:line), "
        "the prediction and its scores (class probabilities, per-word tag probabilities, the "
        "answer span's characters and probability).",
    )
    parser.add_argument(
        "run",
        metavar="RUN",
        help="a fine-tuning run folder (its best/, else final/) or a best/ or final/ folder",
    )
    parser.add_argument("--input", required=True, help="CSV, TSV or JSONL file")
    parser.add_argument("--out", default=None, help="JSONL output file (default: stdout)")
    add_overwrite_option(parser)
    parser.add_argument("--format", choices=FORMATS, default="auto", help="input format")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    for column in COLUMNS:
        parser.add_argument(
            f"--{column.replace('_', '-')}",
            dest=f"column_{column}",
            metavar="NAME",
            default=None,
            help=f"the input's {column} column (default: the run's task.{column})",
        )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triform.finetune import load_finetuned
    from triform.finetune.data import read_rows
    from triform.runtime.device import pick_device

    if args.batch_size < 1:
        raise TriformError(f"--batch-size must be positive, got {args.batch_size}")
    if args.out is not None:
        check_output(args.out, inputs=[args.input], overwrite=args.overwrite)
    rows = read_rows(args.input, args.format)
    finetuned = load_finetuned(args.run, device=pick_device(args.device))
    for column in COLUMNS:
        name = getattr(args, f"column_{column}")
        if name is not None:
            setattr(finetuned.task.cfg, column, name)
    found = finetuned.predict_rows(
        rows, args.batch_size, scores=True, progress=not args.no_progress
    )
    lines = [
        json.dumps({"source": row.source, **detail}, ensure_ascii=False) + "\n"
        for row, detail in zip(rows, found, strict=True)
    ]
    if args.out is None:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    else:
        write_output(args.out, "".join(lines))
        print(f"{len(lines)} predictions ({finetuned.task.kind}) -> {args.out}", file=sys.stderr)
    return 0
