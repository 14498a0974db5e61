"""What every corpus source shares: the :class:`Source` protocol, the :class:`SkipLog` of
what was skipped while reading, and :func:`has_text`.

A source yields documents (strings kept exactly as written) one at a time: text and JSONL
files (:mod:`triform.data.corpus`), tables (:mod:`triform.data.tables`: Parquet, Arrow,
``datasets`` folders, CSV), text held in memory, the embedded default corpus.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from triform.errors import TriformError

log = logging.getLogger("triform.data")


class Source(Protocol):
    """Anything that yields documents: a file, a table, an in-memory list, the stdlib."""

    name: str

    def documents(self, skips: SkipLog) -> Iterator[str]: ...

    def fingerprint(self) -> str: ...

    def size(self) -> int | None: ...


@dataclass
class SkipLog:
    """What was skipped while reading, and whether skipping is allowed at all."""

    on_error: str = "skip"
    entries: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        if self.on_error == "raise":
            raise TriformError(f"{name}: {reason}")
        log.warning("skipping %s: %s", name, reason)
        self.entries.append((name, reason))


def has_text(text: str) -> bool:
    """Whether ``text`` holds a visible (non-whitespace) character."""
    return not text.isspace() and text != ""
