"""Corpora in the formats people hold: Parquet, Arrow / ``datasets`` folders, CSV and TSV.

Each file is larger than the reader's batch or buffer; the texts come back exactly as written
and in order, `triform pretrain` runs on each (on two processes as on one), and peak memory
does not grow with the corpus.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from triform.cli import main
from triform.data import Corpus
from triform.data import tables as tables_module
from triform.errors import TriformError

pa = pytest.importorskip("pyarrow", reason="the Parquet and Arrow readers need pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

HAS_DATASETS = importlib.util.find_spec("datasets") is not None
ROWS = 3 * tables_module.BATCH_ROWS + 17  # several batches, the last one short


def _texts(n: int = ROWS) -> list[str]:
    """Texts that test exactness: line breaks (``\\n``, ``\\r\\n``), blank lines, quotes,
    commas, tabs, leading and trailing spaces, non-ASCII; in an order worth checking."""
    shapes = [
        "plain text {i}",
        '  "quoted", with, commas {i}  ',
        "two\nlines {i}\n",
        "crlf\r\nline {i}",
        "blank\n\nline {i}\n\n",
        "tab\there {i}\t",
        "ünïcödé — 日本語 {i} 🙂",
        'a "" pair of quotes {i}',
    ]
    return [shapes[i % len(shapes)].format(i=i) for i in range(n)]


def _parquet(path: Path, texts: list[str], row_group_size: int = 700) -> Path:
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _dataset_folder(path: Path, texts: list[str]) -> Path:
    """``datasets.Dataset.save_to_disk`` in several shards, or (without ``datasets``) the
    same layout written with pyarrow: Arrow IPC streams listed in ``state.json``."""
    if HAS_DATASETS:
        import datasets

        dataset = datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})
        dataset.save_to_disk(str(path), num_shards=3)
        return path
    path.mkdir()
    names = []
    third = -(-len(texts) // 3)
    for shard in range(3):
        part = texts[shard * third : (shard + 1) * third]
        table = pa.table({"text": part, "id": list(range(len(part)))})
        name = f"data-{shard:05d}-of-00003.arrow"
        with pa.OSFile(str(path / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            for batch in table.to_batches(max_chunksize=500):
                w.write_batch(batch)
        names.append({"filename": name})
    (path / "state.json").write_text(json.dumps({"_data_files": names}))
    (path / "dataset_info.json").write_text("{}")
    return path


def _csv(path: Path, texts: list[str], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["id", "text"])
        writer.writerows([i, t] for i, t in enumerate(texts))
    return path


def _kept(texts: list[str]) -> list[str]:
    return [t for t in texts if t.strip()]


def test_parquet_rows_come_back_exactly_in_order(tmp_path: Path) -> None:
    texts = _texts()
    path = _parquet(tmp_path / "corpus.parquet", texts)
    assert pq.ParquetFile(path).num_row_groups > 1
    assert list(Corpus.from_paths(path).documents()) == texts
    # nulls and whitespace-only cells are left out (nulls counted), like empty JSONL records
    table = pa.table({"text": ["a", None, "  ", "b"]})
    pq.write_table(table, tmp_path / "nulls.parquet")
    corpus = Corpus.from_paths(tmp_path / "nulls.parquet")
    assert list(corpus.documents()) == ["a", "b"]
    assert len(corpus.skipped) == 1 and "1 row(s)" in corpus.skipped[0][1]


def test_dataset_folder_and_arrow_files_come_back_exactly(tmp_path: Path) -> None:
    texts = _texts()
    folder = _dataset_folder(tmp_path / "saved", texts)
    assert len(list(folder.glob("*.arrow"))) == 3
    assert list(Corpus.from_paths(folder).documents()) == texts
    # one Arrow file in the IPC file format, and a datasets folder found inside a folder
    table = pa.table({"text": texts})
    with (
        pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as w,
    ):
        for batch in table.to_batches(max_chunksize=300):
            w.write_batch(batch)
    assert list(Corpus.from_paths(tmp_path / "file.arrow").documents()) == texts
    parent = tmp_path / "all"
    parent.mkdir()
    folder.rename(parent / "b-saved")
    (parent / "a.txt").write_text("first file")
    (parent / "labels.csv").write_text("id,label\n1,x\n")  # CSV only when named
    docs = list(Corpus.from_paths(parent).documents())
    assert docs == ["first file", *texts]


def test_csv_and_tsv_rows_come_back_exactly(tmp_path: Path) -> None:
    texts = _texts()
    texts[5] = "a very long document, " * 8000  # beyond csv's default 128 KiB cell limit
    path = _csv(tmp_path / "corpus.csv", texts)
    assert path.stat().st_size > 1 << 16  # far beyond the reader's buffer
    assert list(Corpus.from_paths(path).documents()) == _kept(texts)
    plain = [t.replace("\t", " ").replace("\n", " ").replace("\r", " ") for t in texts]
    with (tmp_path / "corpus.tsv").open("w", encoding="utf-8") as fh:  # GLUE-style: no quoting
        fh.write("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(plain)))
    assert list(Corpus.from_paths(tmp_path / "corpus.tsv").documents()) == _kept(plain)


@pytest.mark.parametrize("fmt", ["parquet", "datasets", "csv"])
def test_a_missing_column_is_one_line_naming_file_column_and_columns(
    fmt: str, tmp_path: Path
) -> None:
    texts = _texts(10)
    path = {
        "parquet": lambda: _parquet(tmp_path / "c.parquet", texts),
        "datasets": lambda: _dataset_folder(tmp_path / "saved", texts),
        "csv": lambda: _csv(tmp_path / "c.csv", texts),
    }[fmt]()
    with pytest.raises(TriformError) as err:
        Corpus.from_paths(path, text_field="body")
    message = str(err.value)
    assert "\n" not in message
    assert "'body'" in message and "'id'" in message and "'text'" in message
    assert str(path) in message


def test_a_dataset_dict_and_a_column_of_numbers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with pytest.raises(TriformError, match="splits train, test: name one split's folder"):
        Corpus.from_paths(tmp_path / "dd")
    path = _parquet(tmp_path / "c.parquet", _texts(10))
    with pytest.raises(TriformError, match="column 'id' holds int64, not text"):
        Corpus.from_paths(path, text_field="id")


def test_without_pyarrow_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _parquet(tmp_path / "c.parquet", _texts(10))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(TriformError, match=r"pip install 'triform\[data\]'"):
        Corpus.from_paths(path)


TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.ffn_size=64",
    "train.steps=2",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.checkpoint_every=2",
    "train.progress=false",
    "train.tensorboard=false",
    "data.seq_len=32",
    "data.workers=1",
    "tokenizer.kind=char",
]


@pytest.mark.parametrize("fmt", ["parquet", "datasets", "csv"])
def test_pretrain_runs_on_each_format_through_the_cli(fmt: str, tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    texts = list(topics.values())[:60]
    train, val = texts[:50], texts[50:]
    write = {
        "parquet": lambda name, t: _parquet(tmp_path / f"{name}.parquet", t, row_group_size=7),
        "datasets": lambda name, t: _dataset_folder(tmp_path / name, t),
        "csv": lambda name, t: _csv(tmp_path / f"{name}.csv", t),
    }[fmt]
    corpus, validation = write("train", train), write("val", val)
    out = tmp_path / "run"
    args = ["pretrain", "--set", f"data.corpus={json.dumps(str(corpus))}"]
    for item in [*TINY, f"data.validation={json.dumps(str(validation))}", f"train.out_dir={out}"]:
        args += ["--set", item]
    assert main(args) == 0
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] == len(train)
    assert meta["splits"]["val"]["documents"] == len(val)
    assert meta["splits"]["train"]["chars"] == sum(map(len, train))


_PEAK = """
import resource, sys
from triform.data import Corpus
chars = sum(len(doc) for doc in Corpus.from_paths(sys.argv[1]).documents())
# VmHWM: this process's own peak (ru_maxrss may start from the parent's size at fork)
status = open("/proc/self/status").read().split("VmHWM:")
peak = int(status[1].split()[0]) if len(status) > 1 else resource.getrusage(0).ru_maxrss
print(chars, peak)
"""


def _random_chunks(megabytes: int, doc_chars: int = 2000):
    """About ``megabytes`` MB of incompressible lower-case text, in documents, 8 MB at a
    time (so that writing the file costs this process little memory)."""
    import numpy as np

    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     \n", dtype=np.uint8)
    rng = np.random.default_rng(0)
    chunk = 8_000_000
    for start in range(0, megabytes * 1_000_000, chunk):
        size = min(chunk, megabytes * 1_000_000 - start)
        blob = letters[rng.integers(0, len(letters), size, dtype=np.uint8)].tobytes().decode()
        yield [blob[i : i + doc_chars] for i in range(0, len(blob), doc_chars)]


def write_table(path: Path, megabytes: int) -> Path:
    """A Parquet (row groups of 2,000 rows, uncompressed) or Arrow stream file of
    ``megabytes`` MB of text, written chunk by chunk."""
    schema = pa.schema([("text", pa.string())])
    if path.suffix == ".parquet":
        with pq.ParquetWriter(path, schema, compression="none") as writer:
            for texts in _random_chunks(megabytes):
                writer.write_table(pa.table({"text": texts}), row_group_size=2000)
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for texts in _random_chunks(megabytes):
                for batch in pa.table({"text": texts}).to_batches(max_chunksize=1000):
                    writer.write_batch(batch)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_peak_memory_does_not_grow_with_the_corpus(fmt: str, tmp_path: Path) -> None:
    """Reading 40 MB and 160 MB of text: the peak resident memory of the reading process
    grows by far less than the 120 MB between them (a whole load would add all of it)."""
    peaks = []
    for megabytes in (40, 160):
        path = write_table(tmp_path / f"{megabytes}.{fmt}", megabytes)
        result = subprocess.run(
            [sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True
        )
        chars, peak_kb = map(int, result.stdout.split())
        assert chars == megabytes * 1_000_000
        peaks.append(peak_kb / 1024)
        path.unlink()
    assert peaks[1] - peaks[0] < 30, f"peak RSS {peaks[0]:.0f} MB -> {peaks[1]:.0f} MB"


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs the gloo backend"
)
def test_two_processes_read_a_parquet_corpus_as_one_does(tmp_path: Path) -> None:
    """Under DDP rank 0 reads the table and writes the shards once; both ranks train on
    them, and the run is the one-process run (the same shards, the same losses)."""
    from pydoc_data.topics import topics

    from launch import launch
    from triform.train.metrics import read_metrics

    texts = list(topics.values())[:60]
    corpus = _parquet(tmp_path / "train.parquet", texts[:50], row_group_size=7)
    validation = _parquet(tmp_path / "val.parquet", texts[50:], row_group_size=3)
    common = [*TINY, f"data.corpus={json.dumps(str(corpus))}", "train.threads=1",
              f"data.validation={json.dumps(str(validation))}", "train.log_every=1",
              "model.dropout=0.0", "model.attention_dropout=0.0",
              'train.precision="fp32"']  # fmt: skip

    def args(out: Path, *extra: str) -> list[str]:
        return ["pretrain", *[a for item in [*common, f"train.out_dir={out}", *extra]
                              for a in ("--set", item)]]  # fmt: skip

    assert main(args(tmp_path / "one")) == 0
    ranks = launch(args(tmp_path / "two", 'train.parallel="ddp"'), tmp_path / "logs")
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    meta = [
        json.loads((tmp_path / run / "data" / "meta.json").read_text()) for run in ("one", "two")
    ]
    assert meta[0]["splits"] == meta[1]["splits"]
    assert meta[1]["splits"]["train"]["documents"] == 50
    for split in ("train", "val"):
        one, two = (read_metrics(tmp_path / run, split=split) for run in ("one", "two"))
        assert [r["step"] for r in one] == [r["step"] for r in two]
        for a, b in zip(one, two, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (split, a, b)
