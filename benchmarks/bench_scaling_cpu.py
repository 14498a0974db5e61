"""Data-parallel scaling on CPU: the same pretraining run on 1 process and on N processes
(``torchrun``, gloo), one thread each, side by side.

    python benchmarks/bench_scaling_cpu.py [--processes 2] [--steps 60] [--batch 16] [--tiny]

Both runs train the same config (a small GPT-2 on the Shakespeare corpus, or the embedded
default corpus without it) with the same global batch, so they do the same work and reach
the same losses; only the number of processes differs. Tokenizer and shards are prepared
once beforehand, outside the timings. The rate is the median of the tokens/s the loop logs
every ``--log-every`` steps (all ranks together), leaving out the first window (warm-up).
Prints a Markdown table ready for BENCHMARKS.md. Run it on an otherwise idle machine with at
least ``--processes`` cores: it measures how well the processes share the work, which other
jobs on the cores distort.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"

MODEL = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "ffn_size": 1024}
TINY_MODEL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ffn_size": 64}


def _overrides(args: argparse.Namespace, work: Path, out: Path) -> list[str]:
    corpus = str(SHAKESPEARE) if SHAKESPEARE.is_dir() else "default"
    model = TINY_MODEL if args.tiny else MODEL
    items = {
        "model.preset": "gpt2",
        **{f"model.{k}": v for k, v in model.items()},
        "model.max_positions": args.seq,
        "model.dropout": 0.0,
        "model.attention_dropout": 0.0,
        "tokenizer.kind": "byte-bpe",
        "tokenizer.vocab_size": 256 + 64 if args.tiny else 4096,
        "data.corpus": corpus,
        "data.shards_dir": str(work / "shards"),
        "data.seq_len": args.seq,
        "data.val_fraction": 0.02,
        "objective.name": "causal-lm",
        "train.out_dir": str(out),
        "train.steps": args.steps,
        "train.batch_size": args.batch,
        "train.log_every": args.log_every,
        "train.eval_every": args.steps,
        "train.eval_batches": 1,
        "train.checkpoint_every": args.steps,
        "train.sample_tokens": 1,
        "train.threads": 1,
        "train.progress": False,
        "train.tensorboard": False,
        "train.parallel": "ddp",
    }
    tokenizer = work / "prepare" / "tokenizer.json"  # trained by the preparing run, then shared
    if tokenizer.is_file():
        items["tokenizer.path"] = str(tokenizer)
    flat = []
    for key, value in items.items():
        flat += ["--set", f"{key}={json.dumps(value)}"]
    return flat


def _run(command: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def _rate(out: Path) -> tuple[float, float]:
    """(median tokens/s after the first window, final train loss) from a run folder."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    rates = [r["tokens_per_s"] for r in train[1:]] or [train[0]["tokens_per_s"]]
    return statistics.median(rates), train[-1]["loss"]


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per world size: processes, tokens/s, final loss, wall seconds."""
    work = Path(args.work or tempfile.mkdtemp(prefix="triform-scaling-"))
    # --overwrite: in a --work folder used before, the earlier runs move into previous-<time>/
    cli = [sys.executable, "-m", "triform.cli", "pretrain", "--overwrite"]
    # Tokenizer and shards, once, outside the timings.
    _run([*cli, *_overrides(args, work, work / "prepare"), "--set", "train.steps=1"])
    rows = []
    for world in (1, args.processes):
        out = work / f"world{world}"
        launcher = (
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={world}", "-m", "triform.cli", "pretrain", "--overwrite"]
            if world > 1
            else cli
        )  # fmt: skip
        seconds = _run([*launcher, *_overrides(args, work, out)])
        rate, loss = _rate(out)
        rows.append({"processes": world, "tokens_per_s": rate, "loss": loss, "seconds": seconds})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16, help="the global batch")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--work", help="folder for shards and runs (default: a temp folder)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    rows = measure(args)
    base = rows[0]["tokens_per_s"]
    model = TINY_MODEL if args.tiny else MODEL
    print(
        f"GPT-2 shape {model}, global batch {args.batch} x {args.seq} tokens, "
        f"{args.steps} steps, 1 thread per process (gloo)\n"
    )
    print("| processes x threads | tokens/s | speed-up | final train loss | wall seconds |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['processes']} x 1 | {row['tokens_per_s']:,.0f} | "
            f"{row['tokens_per_s'] / base:.2f}x | {row['loss']:.4f} | {row['seconds']:.0f} |"
        )
    return rows


if __name__ == "__main__":
    main()
