"""Benchmark of the data path: tokenizer training, shard preparation, batch readers.

    python benchmarks/bench_data.py [--data ../shared/data/shakespeare] [--json out.json]
    python benchmarks/bench_data.py --formats [--sizes 50 500] [--json out.json]

Measures, on the given corpus (default: the shared Shakespeare folder):

1. tokenizer training time for every kind at each ``--vocab-sizes`` (default 8000 and 32000);
2. shard preparation throughput (MB of text per second) with 1 and 2 worker processes;
3. batch-reader throughput (tokens per second) of every reader, against what a trainer
   consumes: forward + backward tokens/s of a GPT-2-small-shaped model
   (``transformers.GPT2LMHeadModel(GPT2Config())``, batch 4 x 256) on this machine. The
   data path must be at least 100x faster so that it is never the bottleneck.

``--formats`` instead measures the peak resident memory (VmHWM) and wall time of
``triform data prepare`` (one process: ``--workers 0``, a character tokenizer) on
``--sizes`` MB of generated text (incompressible random letters, 2,000-character documents)
in each corpus format: JSONL, Parquet, a ``datasets`` folder (Arrow streams) and CSV. A reader
that streams keeps the peak flat from the small corpus to the large one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from triform.data import Corpus
from triform.data.readers import CausalWindows, DocumentSequences, PackedSequences, SentencePairs
from triform.data.shards import ShardSet, prepare_shards
from triform.tokenizers import KINDS, SpecialTokens, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "shakespeare"


def bench_tokenizers(corpus: Corpus, vocab_sizes: list[int], kinds: list[str]) -> list[dict]:
    rows = []
    for vocab in vocab_sizes:
        for kind in kinds:
            start = time.perf_counter()
            tok = train_tokenizer(corpus, kind=kind, vocab_size=vocab)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "kind": kind,
                    "vocab_size": vocab,
                    "got": tok.get_vocab_size(),
                    "seconds": round(seconds, 2),
                }
            )
            print(
                f"  train {kind:9s} vocab {vocab:6d}: {seconds:6.2f} s "
                f"({tok.get_vocab_size()} tokens)",
                flush=True,
            )
    return rows


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_prepare(
    corpus: Corpus, tmp: Path, kinds: list[str], workers: list[int], repeats: int
) -> tuple[list[dict], dict]:
    """Shard preparation MB/s (best of ``repeats``) and its CPU time; returns the rows and a
    shard folder per tokenizer kind for the reader benchmark."""
    megabytes = corpus.total_bytes() / 1e6
    rows, folders = [], {}
    for kind in kinds:
        tok = train_tokenizer(corpus, kind=kind, vocab_size=8000)
        for w in workers:
            best, cpu = float("inf"), float("inf")
            for r in range(repeats):
                out = tmp / f"shards-{kind}-{w}-{r}"
                before = _cpu_seconds()
                info = prepare_shards(corpus, tok, out, workers=w, progress=False)
                cpu = min(cpu, _cpu_seconds() - before)
                best = min(best, info.seconds)
                folders[kind] = out
            tokens = sum(s["tokens"] for s in info.meta["splits"].values())
            row = {
                "kind": kind,
                "workers": w,
                "seconds": round(best, 2),
                "mb_per_s": round(megabytes / best, 2),
                "cpu_seconds": round(cpu, 2),
                "tokens": tokens,
            }
            rows.append(row)
            print(
                f"  prepare {kind:9s} workers {w}: {best:6.2f} s, {megabytes / best:5.2f} MB/s, "
                f"{cpu:6.2f} CPU-s, {tokens:,} tokens",
                flush=True,
            )
    return rows, folders


def _throughput(reader, steps: int) -> float:
    reader.batch(0)
    start = time.perf_counter()
    tokens = 0
    for step in range(1, steps + 1):
        tokens += reader.batch(step)["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def bench_readers(shards: ShardSet, batch_size: int, seq_len: int, steps: int) -> list[dict]:
    sp = shards.special
    pair_special = SpecialTokens(pad_id=0, cls_id=0, sep_id=0)  # GPT-2 vocab has no [CLS]
    readers = {
        "CausalWindows": CausalWindows(shards, seq_len, batch_size),
        "PackedSequences": PackedSequences(
            shards, seq_len, batch_size, bos_id=sp.eos_id, eos_id=sp.eos_id
        ),
        "DocumentSequences": DocumentSequences(shards, seq_len, batch_size, eos_id=sp.eos_id),
        "SentencePairs (NSP)": SentencePairs(shards, seq_len, batch_size, special=pair_special),
        "SentencePairs (SOP)": SentencePairs(
            shards, seq_len, batch_size, mode="sop", special=pair_special
        ),
    }
    rows = []
    for name, reader in readers.items():
        rate = _throughput(reader, steps)
        rows.append(
            {"reader": name, "batch": f"{batch_size}x{seq_len}", "tokens_per_s": round(rate)}
        )
        print(f"  read {name:20s} {batch_size}x{seq_len}: {rate / 1e6:8.2f} M tokens/s", flush=True)
    return rows


def bench_trainer(steps: int, batch_size: int = 4, seq_len: int = 256) -> float:
    """Forward + backward tokens/s of a GPT-2-small-shaped model (what a trainer consumes)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    model.train()
    ids = torch.randint(0, 50257, (batch_size, seq_len))
    model(input_ids=ids, labels=ids).loss.backward()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
    rate = steps * batch_size * seq_len / (time.perf_counter() - start)
    print(
        f"  trainer GPT-2 small fwd+bwd {batch_size}x{seq_len}: {rate:8.1f} tokens/s "
        f"({torch.get_num_threads()} threads)",
        flush=True,
    )
    return rate


FORMATS = ("jsonl", "parquet", "datasets", "csv")
DOC_CHARS = 2000
# Runs the triform CLI and prints this process's own peak resident memory (VmHWM, KiB; unlike
# ru_maxrss it does not start from the parent's size at fork).
_PEAK_OF_CLI = """
import sys
from triform.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read().split("VmHWM:")
print("PEAK_KB", status[1].split()[0] if len(status) > 1 else -1, file=sys.stderr)
sys.exit(code)
"""


def _random_chunks(megabytes: int, chunk: int = 8_000_000) -> Iterator[list[str]]:
    """``megabytes`` MB of incompressible text (26 letters, spaces, line breaks) in
    documents of ``DOC_CHARS`` characters, ``chunk`` characters at a time."""
    import numpy as np

    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     \n", dtype=np.uint8)
    rng = np.random.default_rng(0)
    total = megabytes * 1_000_000
    for start in range(0, total, chunk):
        size = min(chunk, total - start)
        blob = letters[rng.integers(0, len(letters), size, dtype=np.uint8)].tobytes().decode()
        yield [blob[i : i + DOC_CHARS] for i in range(0, len(blob), DOC_CHARS)]


def write_corpus(fmt: str, folder: Path, megabytes: int) -> Path:
    """A corpus of ``megabytes`` MB in format ``fmt``, written chunk by chunk (this process
    never holds it whole). Parquet: row groups of 2,000 rows, snappy; the ``datasets``
    folder: ``state.json`` + Arrow streams of 1,000-row batches, as ``save_to_disk`` writes."""
    import csv

    chunks = _random_chunks(megabytes)
    if fmt == "jsonl":
        path = folder / "corpus.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for texts in chunks:
                fh.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        return path
    if fmt == "csv":
        path = folder / "corpus.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text"])
            for texts in chunks:
                writer.writerows([t] for t in texts)
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string())])
    if fmt == "parquet":
        path = folder / "corpus.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            for texts in chunks:
                writer.write_table(pa.table({"text": texts}), row_group_size=2000)
        return path
    path = folder / "corpus-dataset"
    path.mkdir()
    shard = path / "data-00000-of-00001.arrow"
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for texts in chunks:
            for batch in pa.table({"text": texts}).to_batches(max_chunksize=1000):
                writer.write_batch(batch)
    (path / "state.json").write_text(json.dumps({"_data_files": [{"filename": shard.name}]}))
    (path / "dataset_info.json").write_text("{}")
    return path


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_formats(tmp: Path, sizes: list[int], formats: list[str]) -> list[dict]:
    """Peak RSS and wall time of ``triform data prepare`` per format and corpus size."""
    from triform.tokenizers import save_tokenizer

    sample = next(_random_chunks(1, chunk=1_000_000))
    tokenizer = save_tokenizer(train_tokenizer(sample, kind="char"), tmp / "tokenizer.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rows = []
    for megabytes in sizes:
        for fmt in formats:
            folder = tmp / f"{fmt}-{megabytes}"
            folder.mkdir()
            corpus = write_corpus(fmt, folder, megabytes)
            args = ["data", "prepare", str(corpus), "--tokenizer", str(tokenizer)]
            args += ["--out", str(folder / "shards"), "--workers", "0", "--no-progress"]
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", _PEAK_OF_CLI, *args],
                capture_output=True,
                text=True,
                env=env,
            )
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{fmt} {megabytes} MB failed:\n{done.stderr}")
            peak = int(done.stderr.split("PEAK_KB")[-1].split()[0]) / 1024
            meta = json.loads((folder / "shards" / "meta.json").read_text())
            chars = sum(split["chars"] for split in meta["splits"].values())
            row = {
                "format": fmt,
                "megabytes": megabytes,
                "on_disk_mb": round(_disk_bytes(corpus) / 1e6, 1),
                "chars": chars,
                "peak_rss_mb": round(peak, 1),
                "seconds": round(seconds, 1),
            }
            rows.append(row)
            print(
                f"  data prepare {fmt:8s} {megabytes:4d} MB of text ({row['on_disk_mb']:7.1f} MB "
                f"on disk): peak RSS {peak:7.1f} MB, {seconds:6.1f} s",
                flush=True,
            )
            shutil.rmtree(folder)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--vocab-sizes", type=int, nargs="*", default=[8000, 32000])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--prepare-kinds", nargs="+", default=["byte-bpe", "wordpiece"])
    parser.add_argument("--repeats", type=int, default=3, help="best of N shard preparations")
    parser.add_argument("--reader-steps", type=int, default=200)
    parser.add_argument("--trainer-steps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--formats",
        action="store_true",
        help="peak memory of `triform data prepare` per corpus format (see the docstring)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500], metavar="MB")
    parser.add_argument("--format-list", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = parser.parse_args()
    if args.formats:
        print(
            f"peak memory of triform data prepare; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        tmp = Path(tempfile.mkdtemp(prefix="triform-bench-formats-"))
        try:
            rows = bench_formats(tmp, args.sizes, args.format_list)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps({"formats": rows}, indent=2) + "\n")
        return
    if not args.data.exists():
        raise SystemExit(f"corpus not found: {args.data} (pass --data)")
    corpus = Corpus.from_paths(args.data)
    print(
        f"corpus: {args.data} ({corpus.total_bytes() / 1e6:.2f} MB); "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="triform-bench-"))
    try:
        results = {"corpus": str(args.data), "megabytes": corpus.total_bytes() / 1e6}
        results["tokenizer_training"] = bench_tokenizers(corpus, args.vocab_sizes, args.kinds)
        results["prepare"], folders = bench_prepare(
            corpus, tmp, args.prepare_kinds, [1, 2], args.repeats
        )
        shards = ShardSet(folders.get("byte-bpe", next(iter(folders.values()))))
        results["readers"] = bench_readers(shards, 8, 1024, args.reader_steps)
        results["readers"] += bench_readers(shards, 4, 256, args.reader_steps)
        trainer = bench_trainer(args.trainer_steps)
        results["trainer_tokens_per_s"] = round(trainer, 1)
        slowest = min(r["tokens_per_s"] for r in results["readers"])
        results["slowest_reader_over_trainer"] = round(slowest / trainer)
        print(f"slowest reader / trainer consumption: {slowest / trainer:,.0f}x (needs >= 100x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
