"""``triform data prepare|info``: tokenize a corpus once into memory-mapped shards."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from triform.commands.tokenizer import add_corpus_arguments, corpus_from_args
from triform.errors import TriformError
from triform.outputs import check_run_folder, same_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare and inspect token shards")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    prepare = sub.add_parser(
        "prepare", help="tokenize a corpus into memory-mapped shards (a no-op when up to date)"
    )
    add_corpus_arguments(prepare)
    prepare.add_argument(
        "--tokenizer", required=True, metavar="FILE", help="the tokenizer.json to encode with"
    )
    prepare.add_argument("--out", required=True, metavar="DIR", help="the shard folder")
    prepare.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="share of documents held out for validation (default: 0.01; 0 with --validation)",
    )
    prepare.add_argument(
        "--validation",
        nargs="+",
        metavar="PATH",
        help="files, folders or globs that are the validation split (the corpus is all train)",
    )
    prepare.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="tokenizing processes (default: CPU count, at most 8)",
    )
    prepare.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    prepare.add_argument(
        "--overwrite",
        action="store_true",
        help="replace shards of another corpus or tokenizer in --out (moved aside into "
        "--out/previous-<time>/ once the new ones are complete)",
    )
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(func=run_prepare)

    info = sub.add_parser("info", help="describe a shard folder")
    info.add_argument("shards", metavar="DIR", help="a folder made by `triform data prepare`")
    info.set_defaults(func=run_info)


def run_prepare(args: argparse.Namespace) -> int:
    from triform.data import Corpus
    from triform.data.shards import prepare_shards
    from triform.tokenizers import load_tokenizer

    check_shard_folder(Path(args.out), [*args.corpus, *(args.validation or [])])
    tok = load_tokenizer(args.tokenizer)
    corpus = corpus_from_args(args)
    validation = None
    if args.validation:
        validation = Corpus.from_paths(
            args.validation, text_field=args.text_field, split_documents=args.split_documents
        )
    default_fraction = 0.0 if validation is not None else 0.01
    info = prepare_shards(
        corpus,
        tok,
        args.out,
        validation=validation,
        val_fraction=default_fraction if args.val_fraction is None else args.val_fraction,
        workers=args.workers,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if info.reused:
        print(f"{info.out_dir} is up to date (same corpus and tokenizer); nothing to do")
    else:
        mb = sum(s["chars"] for s in info.meta["splits"].values()) / 1e6
        print(
            f"wrote {info.out_dir}: {mb:.1f} M characters in {info.seconds:.1f} s "
            f"({mb / max(info.seconds, 1e-9):.2f} M/s, {args.workers} worker(s))"
        )
    _print_splits(info.meta)
    return 0


def check_shard_folder(out: Path, inputs: list[str]) -> None:
    """Refuse a shard folder that is a folder of another kind (a run, a model), or is, holds
    or lies inside one of the corpus paths."""
    check_run_folder(out, "shards")
    for source in map(Path, inputs):
        if not source.exists():
            continue  # a glob, or missing: the corpus reader says so
        inside = source.is_dir() and out.resolve().is_relative_to(source.resolve())
        if inside or same_file(out, source) or source.resolve().is_relative_to(out.resolve()):
            raise TriformError(
                f"--out {out} and the corpus {source} overlap: write the shards elsewhere"
            )


def _print_splits(meta: dict) -> None:
    for split, counts in meta["splits"].items():
        print(
            f"  {split}: {counts['tokens']:,} tokens, {counts['documents']:,} documents, "
            f"{counts['sentences']:,} sentences"
        )
    if meta.get("skipped"):
        print(
            f"  skipped {len(meta['skipped'])} source(s): "
            + "; ".join(f"{s['source']} ({s['reason']})" for s in meta["skipped"][:5])
        )


def run_info(args: argparse.Namespace) -> int:
    from triform.data.shards import ShardSet

    shards = ShardSet(Path(args.shards))  # checks it is complete, loads its tokenizer
    meta = shards.meta
    print(
        f"{args.shards}: {meta['dtype']} ids, vocabulary {meta['vocab_size']}, "
        f"corpus {meta['corpus']}"
    )
    print(f"  tokenizer hash: {meta['tokenizer_hash']}")
    _print_splits(meta)
    return 0
