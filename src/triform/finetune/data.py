"""Task data: rows of CSV, TSV or JSONL files, each remembering its file and line.

    rows = read_rows("train.tsv")          # format from the suffix (or format="jsonl", ...)
    rows[0].text("sentence"), rows[0].strings("tokens"), rows[0].number("score")

A malformed file is a :class:`~triform.errors.TriformError` naming the file and line: a CSV
row with the wrong number of fields, a JSONL line that is not a JSON object, a missing
column, a value of the wrong kind. TSV is read without quoting (GLUE's convention); CSV with
the usual double quotes.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triform.errors import TriformError
from triform.textio import read_jsonl, read_text

FORMATS = ("auto", "csv", "tsv", "jsonl")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "jsonl"}  # fmt: skip


@dataclass
class Row:
    """One example: its column values and where it came from (``path:line``)."""

    values: dict[str, Any]
    source: str

    def error(self, message: str) -> TriformError:
        """A :class:`TriformError` about this row, prefixed with its file and line."""
        return TriformError(f"{self.source}: {message}")

    def has(self, column: str) -> bool:
        """Whether the row has a non-empty value in ``column``."""
        value = self.values.get(column)
        return value is not None and value != ""

    def get(self, column: str) -> Any:
        """The raw value of ``column``; a missing column is an error naming the row."""
        if column not in self.values or self.values[column] is None:
            known = ", ".join(repr(k) for k in self.values)
            raise self.error(f"missing column {column!r} (columns: {known})")
        return self.values[column]

    def text(self, column: str) -> str:
        """``column`` as a string (numbers are written out as they are)."""
        value = self.get(column)
        if isinstance(value, (list, dict)):
            raise self.error(f"column {column!r} must be text, got {type(value).__name__}")
        return str(value)

    def number(self, column: str) -> float:
        """``column`` as a finite float (``nan`` and ``inf`` are refused: a loss of them
        diverges at once)."""
        value = self.get(column)
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(f"column {column!r} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise self.error(f"column {column!r} must be a finite number, got {value!r}")
        return number

    def integer(self, column: str) -> int:
        """``column`` as an int (``"3"`` and ``3.0`` are accepted)."""
        number = self.number(column)
        if number != int(number):
            raise self.error(f"column {column!r} must be a whole number, got {number}")
        return int(number)

    def strings(self, column: str) -> list[str]:
        """``column`` as a list of strings: a JSON list, a JSON array written as text, or
        whitespace-separated words (CSV/TSV cells)."""
        value = self.get(column)
        if isinstance(value, str):
            stripped = value.strip()
            if stripped.startswith("["):
                try:
                    value = json.loads(stripped)
                except json.JSONDecodeError:
                    raise self.error(f"column {column!r}: malformed JSON list") from None
            else:
                return stripped.split()
        if not isinstance(value, list) or any(isinstance(v, (list, dict)) for v in value):
            raise self.error(f"column {column!r} must be a list of strings, got {value!r}")
        return [str(v) for v in value]


def detect_format(path: Path, fmt: str = "auto") -> str:
    """``csv``, ``tsv`` or ``jsonl``: ``fmt`` unless it is ``auto``, else from the suffix."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise TriformError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TriformError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
            "use .csv, .tsv or .jsonl (or set task.format)"
        )
    return kind


def read_rows(path: str | Path, fmt: str = "auto") -> list[Row]:
    """Every row of a CSV, TSV or JSONL file, in order. Blank lines are skipped; an empty
    file, a missing file or a malformed row is a :class:`TriformError`."""
    path = Path(path)
    if not path.is_file():
        raise TriformError(f"data file not found: {path}")
    kind = detect_format(path, fmt)
    if kind == "jsonl":
        rows = [Row(value, f"{path}:{number}") for number, value in read_jsonl(path)]
    else:
        rows = _read_delimited(path, read_text(path), kind)
    if not rows:
        raise TriformError(f"{path}: no rows")
    return rows


def _read_delimited(path: Path, text: str, kind: str) -> list[Row]:
    if kind == "tsv":
        reader = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:  # strict: an unterminated quote is an error, not a field that eats the file
        reader = csv.reader(text.splitlines(keepends=True), strict=True)
    row_start = 1
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [name.strip() for name in header]
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise TriformError(f"{path}:1: duplicate column {duplicates[0]!r} in the header")
        rows = []
        row_start = reader.line_num + 1  # the line the next row starts on
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                row_start = reader.line_num + 1
                continue
            if len(fields) != len(header):
                raise TriformError(
                    f"{path}:{reader.line_num}: expected {len(header)} fields "
                    f"({', '.join(header)}), found {len(fields)}"
                )
            rows.append(Row(dict(zip(header, fields, strict=True)), f"{path}:{reader.line_num}"))
            row_start = reader.line_num + 1
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise TriformError(
                f"{path}:{row_start}: unterminated quote: the quoted field that starts in "
                "this row runs to the end of the file"
            ) from None
        raise TriformError(f"{path}:{reader.line_num}: malformed {kind.upper()}: {err}") from None
    return rows
