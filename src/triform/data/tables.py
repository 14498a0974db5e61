"""Corpora in tables: Parquet files, Arrow files and HuggingFace ``datasets`` folders
(``Dataset.save_to_disk``), CSV and TSV files.

One row is one document: the string in the ``text_field`` column, exactly as stored (as a
JSONL record is one document). A null or an all-whitespace cell is left out; nulls are
counted in :attr:`~triform.data.Corpus.skipped`.

Every table is read as a stream, a batch of rows at a time, so a corpus larger than memory is
never loaded whole:

- **Parquet**: ``pyarrow.parquet.ParquetFile.iter_batches`` over the one column, with
  buffered reads and no pre-buffering, so memory follows a batch and a data page, neither
  the file nor the other columns;
- **Arrow** (IPC stream or file format; a ``datasets`` folder is its ``state.json``'s data
  files in order): memory-mapped, zero copy; the pages read are handed back to the kernel
  after every batch (``madvise(MADV_DONTNEED)``: they stay in the page cache), so the
  process's resident memory stays that of one batch however large the file;
- **CSV** (``.csv``, double-quoted cells may span lines) and **TSV** (``.tsv``, no quoting,
  GLUE's convention, as fine-tuning reads them), gzipped or not: Python's ``csv`` module, row
  by row, the header row naming the columns.

Parquet and Arrow need ``pyarrow`` (``pip install 'triform[data]'``); the ``datasets``
package is never imported. The column is checked when the corpus is built: a file without it
is a one-line :class:`~triform.errors.TriformError` naming the file, the column and the
columns it has.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from triform.data.sources import SkipLog, has_text
from triform.errors import TriformError

PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow",)
CSV_SUFFIXES = (".csv", ".tsv")  # gzipped or not
DATASET_STATE = "state.json"  # what Dataset.save_to_disk writes beside its .arrow files
DATASET_DICT = "dataset_dict.json"  # DatasetDict.save_to_disk: one folder per split
BATCH_ROWS = 1024  # rows per batch read from Parquet
READ_BUFFER = 1 << 20  # bytes per buffered Parquet read
_ARROW_MAGIC = b"ARROW1"  # the IPC file format starts with it; the stream format does not
_CSV_FIELD_LIMIT = (1 << 31) - 1  # a document may be far longer than csv's 128 KiB default
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # not on Windows


def require_pyarrow(what: str) -> ModuleType:
    """The ``pyarrow`` module, or a one-line :class:`TriformError` naming the extra."""
    try:
        import pyarrow
    except ImportError:
        raise TriformError(f"reading {what} needs pyarrow: pip install 'triform[data]'") from None
    return pyarrow


def _missing_column(name: str, column: str, columns: list[str]) -> TriformError:
    listed = ", ".join(repr(c) for c in columns) or "none"
    return TriformError(
        f"{name} has no column {column!r} (set data.text_field / --text-field); "
        f"its columns: {listed}"
    )


def _check_text_type(pa: ModuleType, name: str, column: str, dtype: Any) -> None:
    """Refuse a column that does not hold strings (plain, large, view or dictionary)."""
    types = pa.types
    value = dtype.value_type if types.is_dictionary(dtype) else dtype
    strings = types.is_string(value) or types.is_large_string(value)
    if not strings and hasattr(types, "is_string_view"):
        strings = types.is_string_view(value)
    if not strings:
        raise TriformError(f"{name}: column {column!r} holds {dtype}, not text")


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _texts(values: list[Any], nulls: list[int]) -> Iterator[str]:
    """The documents of one batch of cells; nulls counted in ``nulls[0]``."""
    for value in values:
        if value is None:
            nulls[0] += 1
        elif has_text(value):
            yield value


def _report_nulls(skips: SkipLog, name: str, column: str, nulls: int) -> None:
    if nulls:
        skips.skip(name, f"{nulls} row(s) with no text (null) in column {column!r}")


# ---------------------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------------------
@dataclass
class ParquetSource:
    """One Parquet file; its ``text_field`` column read a batch of rows at a time."""

    path: Path
    text_field: str = "text"

    @property
    def name(self) -> str:
        return str(self.path)

    def _open(self) -> Any:
        require_pyarrow("Parquet files")
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path, buffer_size=READ_BUFFER, pre_buffer=False)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise TriformError(f"{self.name}: not a readable Parquet file ({err})") from None

    def check(self) -> None:
        """Refuse a file without the column, or whose column is not text."""
        pa = require_pyarrow("Parquet files")
        schema = self._open().schema_arrow
        if self.text_field not in schema.names:
            raise _missing_column(self.name, self.text_field, schema.names)
        _check_text_type(pa, self.name, self.text_field, schema.field(self.text_field).type)

    def documents(self, skips: SkipLog) -> Iterator[str]:
        parquet, nulls = self._open(), [0]
        batches = parquet.iter_batches(
            batch_size=BATCH_ROWS, columns=[self.text_field], use_threads=False
        )
        for batch in batches:
            yield from _texts(batch.column(0).to_pylist(), nulls)
        _report_nulls(skips, self.name, self.text_field, nulls[0])

    def fingerprint(self) -> str:
        return f"parquet:{_stat_key(self.path)}:{self.text_field}"

    def size(self) -> int | None:
        return None  # compressed columns: not the bytes of text


# ---------------------------------------------------------------------------------------
# Arrow files and datasets folders
# ---------------------------------------------------------------------------------------
def dataset_files(folder: Path) -> list[Path] | None:
    """The ``.arrow`` files of a ``datasets`` folder (``Dataset.save_to_disk``) in order, or
    ``None`` when ``folder`` is not one. A ``DatasetDict`` folder is refused naming its
    splits (each split is a folder of its own to name)."""
    if (folder / DATASET_DICT).is_file():
        try:
            splits = json.loads((folder / DATASET_DICT).read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            splits = sorted(p.name for p in folder.iterdir() if (p / DATASET_STATE).is_file())
        first = folder / str(splits[0]) if splits else folder / "train"
        raise TriformError(
            f"{folder} is a datasets DatasetDict with splits {', '.join(map(str, splits))}: "
            f"name one split's folder, e.g. {first}"
        )
    state = folder / DATASET_STATE
    if not state.is_file():
        return None
    try:
        entries = json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        files = [folder / entry["filename"] for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TriformError(f"{state} is not a datasets state file ({err})") from None
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise TriformError(f"datasets folder {folder} lacks its data file {missing[0].name}")
    return files


def _ipc_batches(pa: ModuleType, view: mmap.mmap, column: str) -> Iterator[list[Any]]:
    """The cells of ``column`` of each record batch of an Arrow IPC file or stream held in
    ``view`` (read zero-copy), as Python values; the pages read are released after each."""
    buffer = pa.py_buffer(view)
    if bytes(view[: len(_ARROW_MAGIC)]) == _ARROW_MAGIC:
        reader = pa.ipc.open_file(buffer)
        batches: Any = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        reader = batches = pa.ipc.open_stream(buffer)
    index = reader.schema.get_field_index(column)
    for batch in batches:
        values = batch.column(index).to_pylist()
        del batch
        if _DONTNEED is not None:  # read-only file pages: they come back on demand
            view.madvise(_DONTNEED)
        yield values


def _open_ipc_schema(pa: ModuleType, path: Path) -> Any:
    """The schema of an Arrow IPC file or stream (only its first message is read)."""
    try:
        with pa.memory_map(str(path)) as source:
            head = source.read(len(_ARROW_MAGIC))
            source.seek(0)
            if head == _ARROW_MAGIC:
                return pa.ipc.open_file(source).schema
            return pa.ipc.open_stream(source).schema
    except (OSError, ValueError) as err:
        raise TriformError(f"{path}: not a readable Arrow file ({err})") from None


@dataclass
class ArrowSource:
    """Arrow IPC files (one ``.arrow`` file, or a ``datasets`` folder's data files), each
    memory-mapped and read a record batch at a time."""

    path: Path
    text_field: str = "text"
    files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.files:
            self.files = dataset_files(self.path) or [self.path]

    @property
    def name(self) -> str:
        return str(self.path)

    def check(self) -> None:
        """Refuse files without the column, or whose column is not text."""
        pa = require_pyarrow("Arrow files and datasets folders")
        for file in self.files:
            schema = _open_ipc_schema(pa, file)
            if self.text_field not in schema.names:
                raise _missing_column(str(file), self.text_field, schema.names)
            _check_text_type(pa, str(file), self.text_field, schema.field(self.text_field).type)

    def documents(self, skips: SkipLog) -> Iterator[str]:
        pa = require_pyarrow("Arrow files and datasets folders")
        nulls = [0]
        for file in self.files:
            with open(file, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    skips.skip(str(file), "empty file")
                    continue
                view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                for values in _ipc_batches(pa, view, self.text_field):
                    yield from _texts(values, nulls)
            except (OSError, ValueError) as err:
                skips.skip(str(file), f"read error ({type(err).__name__}: {err}); rest skipped")
            finally:
                with contextlib.suppress(BufferError):  # pyarrow still holds a view
                    view.close()  # else it is closed when that view is freed
        _report_nulls(skips, self.name, self.text_field, nulls[0])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for file in self.files:
            h.update(_stat_key(file).encode("utf-8"))
        return f"arrow:{self.path.resolve()}:{h.hexdigest()}:{self.text_field}"

    def size(self) -> int | None:
        return None


# ---------------------------------------------------------------------------------------
# CSV and TSV
# ---------------------------------------------------------------------------------------
@dataclass
class CsvSource:
    """A CSV (double quotes, cells may span lines) or TSV file (no quoting), maybe
    gzipped, read row by row; the header row names the columns."""

    path: Path
    text_field: str = "text"

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def gzipped(self) -> bool:
        return self.path.suffix == ".gz"

    @property
    def tsv(self) -> bool:
        return self.path.name.removesuffix(".gz").endswith(".tsv")

    def _rows(self, fh: io.TextIOBase) -> Any:
        csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
        if self.tsv:
            return csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return csv.reader(fh)

    def _open(self) -> io.TextIOWrapper:
        binary = gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")  # noqa: SIM115
        return io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]

    def _header(self) -> list[str]:
        try:
            with self._open() as fh:
                return next(self._rows(fh), [])
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
            raise TriformError(f"{self.name}: cannot read its header row ({err})") from None

    def check(self) -> None:
        """Refuse a file whose header row has no such column."""
        header = self._header()
        if self.text_field not in header:
            raise _missing_column(self.name, self.text_field, header)

    def documents(self, skips: SkipLog) -> Iterator[str]:
        bad, rows = 0, None
        try:
            with self._open() as fh:
                rows = self._rows(fh)
                header = next(rows, [])
                if self.text_field not in header:  # the file changed since the corpus was built
                    skips.skip(self.name, f"no column {self.text_field!r} in the header row")
                    return
                index = header.index(self.text_field)
                for row in rows:
                    if len(row) > index:
                        if has_text(row[index]):
                            yield row[index]
                    elif row:  # a blank line is no row; a short one is
                        bad += 1
        except csv.Error as err:
            line = rows.line_num if rows is not None else 0
            skips.skip(self.name, f"malformed CSV at line {line} ({err}); rest of file skipped")
        except UnicodeDecodeError:
            line = rows.line_num if rows is not None else 0
            skips.skip(self.name, f"not UTF-8 text after line {line}; rest of file skipped")
        except (OSError, EOFError) as err:
            skips.skip(self.name, f"read error ({type(err).__name__})")
        if bad:
            skips.skip(self.name, f"{bad} row(s) without a cell in column {self.text_field!r}")

    def fingerprint(self) -> str:
        return f"csv:{_stat_key(self.path)}:{self.text_field}"

    def size(self) -> int | None:
        return None if self.gzipped else self.path.stat().st_size
