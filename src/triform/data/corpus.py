"""Corpora: documents of text read from ``.txt`` / ``.jsonl`` files (gzipped or not), from
tables (Parquet, Arrow, HuggingFace ``datasets`` folders, CSV, TSV: see
:mod:`triform.data.tables`), from folders and globs of them, or given in memory.

A *document* is a ``str`` that keeps every character of the text as written: blank lines,
indentation, tabs, trailing spaces and the final newline (line endings are read as ``\n``, a
UTF-8 byte-order mark is dropped). Documents are separated

- ``split_documents="file"``: one document per text file (the default);
- ``"blank-line"``: by one or more blank (empty or whitespace-only) lines, BERT's pretraining
  text format: the blank lines are the boundary, everything between them is kept;
- ``"line"``: one document per line (without its line break).

A JSONL record is always one document: its ``text_field`` string, exactly; so is a table row
(its ``text_field`` column). A document with no visible character (empty or whitespace only)
is left out.

Sentences (the unit of NSP/SOP) are the lines of a document, found by :func:`sentence_starts`
when the text is tokenized; they never change the text or its tokens.

Iteration is deterministic: the entries in the order given, each folder or glob in sorted
path order. A folder contributes its text, JSONL, Parquet and Arrow files and its ``datasets``
folders (a ``datasets`` folder is read as one source); CSV and TSV files are read when named
(or matched by a glob), never picked up from a folder, where they are more often labels or
metadata than text.

Bad input never crashes deep inside: a missing path or a glob that matches nothing is a
:class:`~triform.errors.TriformError` when the corpus is built, and so is a table without the
``text_field`` column; a binary or non-UTF-8 file, a broken gzip stream or a bad JSONL record
is skipped with a warning (logger ``triform.data``) and counted in :attr:`Corpus.skipped` (or
raised with ``on_error="raise"``); a corpus that yields no text at all raises when iterated.
"""

from __future__ import annotations

import codecs
import glob as globlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from triform.data.sources import SkipLog, Source, has_text
from triform.data.tables import (
    ARROW_SUFFIXES,
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    ArrowSource,
    CsvSource,
    ParquetSource,
    dataset_files,
)
from triform.errors import ConfigError, TriformError

__all__ = ["Corpus", "SkipLog", "Source", "cut_text", "has_text", "sentence_starts"]

log = logging.getLogger("triform.data")

SplitMode = Literal["file", "blank-line", "line"]
SPLIT_MODES: tuple[str, ...] = ("file", "blank-line", "line")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_SNIFF = 8192


# A sentence boundary: the end of a line's visible text when a later line has visible text.
_SENTENCE_END = re.compile(r"\S(?=[^\S\n]*\n\s*\S)")
_VISIBLE = re.compile(r"\S")


def sentence_starts(text: str) -> list[int]:
    """Character offsets where the sentences (lines) of ``text`` start, the first one 0.

    A sentence runs from the end of the previous line's visible text to the end of its own:
    line breaks, blank lines and indentation lead the sentence that follows them (as a word
    carries its leading space in byte-level BPE and SentencePiece), and trailing whitespace of
    the text stays with the last sentence. Joined, the sentences are the text, exactly.
    """
    return [0, *(m.end() for m in _SENTENCE_END.finditer(text))]


def cut_text(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of about ``max_chars`` characters (a longer line stays whole) that
    join back to ``text`` exactly, cut only at sentence boundaries (see
    :func:`sentence_starts`): after a line's visible text, before the line break."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    start = 0
    while len(text) - start > max_chars:
        cut = _boundary_before(text, start, start + max_chars)
        if cut is None:
            cut = _boundary_after(text, start, start + max_chars)
        if cut is None:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _boundary_at(text: str, newline: int, low: int) -> int | None:
    """The sentence boundary before the line break at ``newline``: after the last visible
    character before it (if that is past ``low`` and visible text follows the break)."""
    cut = newline
    while cut > low and text[cut - 1].isspace():
        cut -= 1
    if cut <= low or _VISIBLE.search(text, newline) is None:
        return None
    return cut


def _boundary_before(text: str, low: int, high: int) -> int | None:
    newline = text.rfind("\n", low, high + 1)
    while newline > low:
        cut = _boundary_at(text, newline, low)
        if cut is not None:
            return cut
        newline = text.rfind("\n", low, newline)
    return None


def _boundary_after(text: str, low: int, after: int) -> int | None:
    newline = text.find("\n", after)
    while newline != -1:
        cut = _boundary_at(text, newline, low)
        if cut is not None:
            return cut
        newline = text.find("\n", newline + 1)
    return None


def _group(lines: Iterable[str], split: str) -> Iterator[str]:
    """Group lines (each with its line break, the last maybe without) into documents."""
    if split == "file":
        text = "".join(lines)
        if has_text(text):
            yield text
        return
    doc: list[str] = []
    for line in lines:
        if split == "line":
            if has_text(line):
                yield line.removesuffix("\n")
        elif has_text(line):
            doc.append(line)
        elif doc:
            yield "".join(doc)
            doc = []
    if doc:
        yield "".join(doc)


@dataclass
class FileSource:
    """One file of text (``fmt="text"``) or JSON lines (``fmt="jsonl"``), maybe gzipped."""

    path: Path
    fmt: str = "text"
    split: str = "file"
    text_field: str = "text"

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def gzipped(self) -> bool:
        return self.path.suffix == ".gz"

    def _open_binary(self) -> io.BufferedIOBase:
        return gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")  # type: ignore[return-value]

    def _sniff(self) -> str | None:
        """A reason to skip this file (binary, not UTF-8, unreadable), or None."""
        try:
            with self._open_binary() as fh:
                head = fh.read(_SNIFF)
        except (OSError, EOFError) as err:
            return f"cannot read ({type(err).__name__}: {err})"
        if b"\x00" in head:
            return "binary file (NUL bytes)"
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError as err:
            return f"not UTF-8 text (byte 0x{head[err.start]:02x} at offset {err.start})"
        return None

    def _lines(self, skips: SkipLog) -> Iterator[str]:
        line_no = 0
        try:
            with self._open_binary() as fh:
                text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="strict")
                for line_no, line in enumerate(text, 1):  # noqa: B007 - line_no used below
                    yield line
        except UnicodeDecodeError:
            skips.skip(self.name, f"not UTF-8 text after line {line_no}; rest of file skipped")
        except (OSError, EOFError) as err:
            skips.skip(self.name, f"read error after line {line_no} ({type(err).__name__})")

    def documents(self, skips: SkipLog) -> Iterator[str]:
        reason = self._sniff()
        if reason is not None:
            skips.skip(self.name, reason)
            return
        if self.fmt == "text":
            yield from _group(self._lines(skips), self.split)
            return
        bad = 0
        for line in self._lines(skips):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                value = record[self.text_field]
            except (ValueError, KeyError, TypeError, IndexError):
                bad += 1
                continue
            if not isinstance(value, str):
                bad += 1
                continue
            if has_text(value):
                yield value
        if bad:
            reason = f"{bad} JSONL record(s) without a string field {self.text_field!r}"
            skips.skip(self.name, reason)

    def fingerprint(self) -> str:
        st = self.path.stat()
        options = f"{self.fmt}:{self.split}:{self.text_field}"
        return f"file:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{options}"

    def size(self) -> int | None:
        return None if self.gzipped else self.path.stat().st_size


@dataclass
class TextsSource:
    """Documents given in memory: each item a text, or a list of lines (joined by ``\n``)."""

    items: Sequence[str | Sequence[str]]
    split: str = "file"
    name: str = "<texts>"

    def documents(self, skips: SkipLog) -> Iterator[str]:
        for item in self.items:
            text = item if isinstance(item, str) else "\n".join(item)
            yield from _group(text.splitlines(keepends=True), self.split)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for item in self.items:
            h.update(json.dumps(item, ensure_ascii=False).encode("utf-8"))
        return f"texts:{self.split}:{h.hexdigest()}"

    def size(self) -> int | None:
        return sum(len(i) if isinstance(i, str) else sum(map(len, i)) for i in self.items)


def _file_format(path: Path) -> str:
    """``text``, ``jsonl``, ``parquet``, ``arrow`` (a file or a ``datasets`` folder) or
    ``csv`` (CSV and TSV), from the name (a ``.gz`` suffix looked through)."""
    if path.is_dir():
        return "arrow"
    name = path.name.removesuffix(".gz")
    for fmt, suffixes in (("jsonl", JSONL_SUFFIXES), ("csv", CSV_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    if path.name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if path.name.endswith(ARROW_SUFFIXES):
        return "arrow"
    return "text"


def _is_corpus_file(path: Path) -> bool:
    """Whether a file found in a folder is read: text, JSONL (maybe gzipped), Parquet and
    Arrow files; CSV and TSV only when named."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES) or path.name.endswith(
        PARQUET_SUFFIXES + ARROW_SUFFIXES
    )


def _folder_files(root: Path) -> list[Path]:
    """The corpus files under ``root`` in sorted path order, hidden ones left out; a
    ``datasets`` folder inside is one entry (its own files are not listed)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if here != root and dataset_files(here) is not None:
            found.append(here)
            subfolders[:] = []
            continue
        found.extend(here / f for f in files if not f.startswith(".") and _is_corpus_file(here / f))
    return sorted(found)


def resolve_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders (recursively: text, JSONL, Parquet and Arrow files and
    ``datasets`` folders, hidden ones left out) and globs into a de-duplicated list of files
    and ``datasets`` folders; a :class:`TriformError` for what does not exist."""
    out: list[Path] = []
    for entry in paths:
        text = os.fspath(entry)
        if any(c in text for c in "*?["):
            found = sorted(
                Path(p)
                for p in globlib.glob(text, recursive=True)
                if Path(p).is_file() or dataset_files(Path(p)) is not None
            )
            if not found:
                raise TriformError(f"no files match {text!r}")
            out.extend(found)
            continue
        p = Path(text)
        if p.is_dir():
            if dataset_files(p) is not None:
                out.append(p)
                continue
            found = _folder_files(p)
            if not found:
                raise TriformError(
                    f"folder {p} holds no corpus files (.txt, .jsonl, maybe gzipped, "
                    ".parquet, .arrow or datasets folders)"
                )
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise TriformError(f"corpus path not found: {p}")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def file_source(path: Path, split: str = "file", text_field: str = "text") -> Source:
    """The source that reads ``path`` (by its format, see :func:`_file_format`); a table
    is checked to have the ``text_field`` column."""
    fmt = _file_format(path)
    if fmt in ("text", "jsonl"):
        return FileSource(path, fmt, split, text_field)
    table = {"parquet": ParquetSource, "arrow": ArrowSource, "csv": CsvSource}[fmt]
    source = table(path, text_field)
    source.check()
    return source


class Corpus:
    """An ordered collection of sources that yields documents (strings, kept exactly).

    >>> corpus = Corpus.from_paths(["books/", "extra/*.jsonl.gz"], split_documents="blank-line")
    >>> for doc in corpus.documents(): ...
    """

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        on_error: str = "skip",
        max_bytes: int | None = None,
        name: str | None = None,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ConfigError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError(f"max_bytes must be positive, got {max_bytes}")
        self.sources = list(sources)
        self.on_error = on_error
        self.max_bytes = max_bytes
        self.name = name or ", ".join(s.name for s in self.sources[:3]) + (
            ", ..." if len(self.sources) > 3 else ""
        )
        self.skipped: list[tuple[str, str]] = []

    @classmethod
    def from_paths(
        cls,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        text_field: str = "text",
        split_documents: SplitMode | str = "file",
        on_error: str = "skip",
        max_bytes: int | None = None,
    ) -> Corpus:
        """A corpus of files, folders and globs: ``.txt``-like text and ``.jsonl``, maybe
        ``.gz``; Parquet, Arrow, CSV and TSV files and ``datasets`` folders (a row is a
        document: its ``text_field`` column). See the module docstring for how documents are
        separated (``split_documents`` applies to text files)."""
        if split_documents not in SPLIT_MODES:
            raise ConfigError(
                f"split_documents must be one of {', '.join(SPLIT_MODES)}, got {split_documents!r}"
            )
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise TriformError("no corpus paths given")
        files = resolve_paths(paths)
        sources = [file_source(f, split_documents, text_field) for f in files]
        name = ", ".join(os.fspath(p) for p in paths)
        return cls(sources, on_error=on_error, max_bytes=max_bytes, name=name)

    @classmethod
    def from_texts(
        cls, texts: Sequence[str | Sequence[str]], *, split_documents: SplitMode | str = "file"
    ) -> Corpus:
        """A corpus held in memory: each item is one document's text (or its list of lines,
        joined by ``\n``), further split by ``split_documents`` like a file."""
        if split_documents not in SPLIT_MODES:
            raise ConfigError(
                f"split_documents must be one of {', '.join(SPLIT_MODES)}, got {split_documents!r}"
            )
        return cls([TextsSource(list(texts), split_documents)])

    def documents(self) -> Iterator[str]:
        """Every document, in order; raises :class:`TriformError` at the end if there was none."""
        skips = SkipLog(self.on_error)
        self.skipped = skips.entries
        count = 0
        total = 0
        for source in self.sources:
            for doc in source.documents(skips):
                count += 1
                yield doc
                if self.max_bytes is not None:
                    total += len(doc)
                    if total >= self.max_bytes:
                        return
        if count == 0:
            raise TriformError(
                f"the corpus has no text ({len(self.sources)} source(s), "
                f"{len(skips.entries)} skipped): {self.name}"
            )

    def texts(self, max_chars: int = 1 << 20) -> Iterator[str]:
        """Each document as one string, long ones in pieces of about ``max_chars`` characters
        cut at line ends (see :func:`cut_text`): the input for tokenizer training."""
        for doc in self.documents():
            yield from cut_text(doc, max_chars)

    def fingerprint(self) -> str:
        """A hash that changes when any source (path, size, modification time, reading
        options) changes; used to make ``prepare_shards`` a no-op on unchanged input."""
        h = hashlib.sha256(f"max_bytes={self.max_bytes}".encode())
        for source in self.sources:
            h.update(source.fingerprint().encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()

    def total_bytes(self) -> int | None:
        """Bytes of text on disk when known (None if any source is compressed)."""
        total = 0
        for source in self.sources:
            size = source.size()
            if size is None:
                return None
            total += size
        return total if self.max_bytes is None else min(total, self.max_bytes)

    def __repr__(self) -> str:
        return f"Corpus({len(self.sources)} source(s): {self.name})"
