"""``triform pretrain [CONFIG.toml] [--set key=value ...] [--resume DIR [--force]]
[--overwrite]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from triform.errors import TriformError

# `triform pretrain` with no config: a small GPT on the embedded default corpus, a few
# minutes on two CPU cores, leaving a checkpoint `triform generate` can use. It runs with the
# library's fast defaults: precision "auto" (bf16 autocast where the CPU or GPU has native
# bf16), fused AdamW and the causal-LM loss fused with the vocabulary projection; not
# torch.compile, whose compile time a run of minutes on a CPU does not win back
# (docs/performance-notes.md).
DEFAULT_RUN = {
    "model": {
        "preset": "gpt2",
        "hidden_size": 256,
        "num_layers": 4,
        "num_heads": 4,
        "ffn_size": 1024,
        "max_positions": 256,
        "dropout": 0.0,
        "attention_dropout": 0.0,
    },
    "tokenizer": {"kind": "byte-bpe", "vocab_size": 4096},
    "data": {"corpus": "default", "seq_len": 128, "val_fraction": 0.02},
    "objective": {"name": "causal-lm"},
    "train": {
        "out_dir": "runs/default-gpt",
        "steps": 600,
        "batch_size": 16,
        "eval_every": 200,
        "eval_batches": 8,
        "checkpoint_every": 200,
        "max_minutes": 4.0,
        "sample_tokens": 48,
        "sample_prompt": "def ",
    },
    "optim": {"lr": 1e-3, "weight_decay": 0.1},
    "schedule": {"kind": "cosine", "warmup_steps": 50},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain a model from a run config (no config: a small GPT on the default corpus)",
    )
    parser.add_argument("config", nargs="?", help="run TOML (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set train.steps=100",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue from a run folder's latest checkpoint (or a checkpoint folder)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="resume from a checkpoint older than the run's latest: move the newer ones aside",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a folder that holds an earlier run: move that run (and shards "
        "of another corpus in data.shards_dir) aside into previous-<time>/",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triform.train.loop import pretrain
    from triform.train.run_config import load_run_config
    from triform.train.task import EVALUATION_KEYS, describe_evaluation

    if args.config is not None and not Path(args.config).is_file():
        raise TriformError(f"config file not found: {args.config}")
    if args.resume is not None and args.overwrite:
        raise TriformError("--resume continues the run in its folder; --overwrite starts afresh")
    defaults = DEFAULT_RUN if args.config is None else None
    config = load_run_config(args.config, args.overrides, defaults=defaults)
    from triform.runtime.distributed import is_main_process, shutdown_distributed

    result = pretrain(config, resume=args.resume, force=args.force, overwrite=args.overwrite)
    shutdown_distributed()  # under torchrun: leave the process group before exiting
    if not is_main_process():  # rank 0 alone reports
        return 0
    scores = {k: v for k, v in result.val_metrics.items() if k not in EVALUATION_KEYS}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    print(f"done: {result.steps} steps, train loss {result.train_loss:.4f}; validation: {summary}")
    read = describe_evaluation(result.val_metrics)
    if read is not None:
        print(read)
    if result.sample is not None:
        print(f"sample: {result.sample!r}")
    print(f"checkpoint: {result.checkpoint}")
    if config.model.form != "encoder":
        print(f"generate from it: triform generate {result.out_dir} --prompt 'Some text'")
    return 0
