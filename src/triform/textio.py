"""Reading the user's input files: text kept exactly, JSON lines with their line numbers.

Every problem is a :class:`~triform.errors.TriformError` naming the file (and line), never a
traceback: a missing file, bytes that are not UTF-8, a line that is not a JSON object.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from triform.errors import TriformError


def read_text(path: str | Path) -> str:
    """The whole text of a UTF-8 file (``-``: standard input), every character kept; line
    endings are read as ``\\n`` and a byte-order mark is dropped, as the corpus reader does."""
    if str(path) == "-":
        return sys.stdin.read()
    path = Path(path)
    if not path.is_file():
        raise TriformError(f"file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TriformError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file."""
    for number, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TriformError(f"{path}:{number}: malformed JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise TriformError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a text file (``-``: standard input), one item each (prompts,
    texts to embed)."""
    if str(path) != "-" and not Path(path).is_file():
        raise TriformError(f"input file not found: {path}")
    return [line for line in read_text(path).split("\n") if line.strip()]
