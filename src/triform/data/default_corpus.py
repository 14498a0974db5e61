"""The embedded default corpus: text that every Python installation already has, so that
``triform`` runs end to end on a fresh machine with no download.

Parts (in this order):

- ``"topics"``: the Python language reference and library help topics shipped with ``pydoc``
  (``pydoc_data.topics``: about 80 documents, ~0.5 MB of English prose), one document each;
- ``"sources"``: the source files of the standard library (located through ``sysconfig``;
  test suites, codec tables, ``site-packages`` and ``idlelib`` left out), one document per
  module (~10 MB of Python code with its docstrings and comments);
- ``"docstrings"`` (not in the default): only the docstrings of those modules, one document
  per module, the docstrings separated by blank lines (~1.7 MB of English; parsing takes
  seconds).

Every text is kept as written (blank lines and indentation included).

The exact text depends on the Python version; the corpus fingerprint records it, so shards
are rebuilt when Python changes. Deterministic: topics sorted by name, files by path.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from triform.data.corpus import Corpus, SkipLog, has_text
from triform.errors import ConfigError, TriformError

PARTS: tuple[str, ...] = ("topics", "sources", "docstrings")
DEFAULT_PARTS: tuple[str, ...] = ("topics", "sources")
_EXCLUDED_DIRS = {
    "encodings",  # machine-generated codec tables: megabytes of hex, no language
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "site-packages",
    "dist-packages",
    "__pycache__",
}


def stdlib_dir() -> Path:
    """The folder of the standard library's Python sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files (tests and third-party packages excluded), sorted."""
    root = stdlib_dir()
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _EXCLUDED_DIRS and not d.startswith("."))
        files.extend(Path(folder) / n for n in sorted(names) if n.endswith(".py"))
    return files


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@dataclass
class PydocTopicsSource:
    """``pydoc_data.topics``: the language reference and help topics, one document each."""

    name: str = "<pydoc topics>"

    def _topics(self) -> dict[str, str]:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            return {}
        return topics

    def documents(self, skips: SkipLog) -> Iterator[str]:
        topics = self._topics()
        for key in sorted(topics):
            if has_text(topics[key]):
                yield topics[key]

    def fingerprint(self) -> str:
        return f"pydoc-topics:{sys.version}:{len(self._topics())}"

    def size(self) -> int | None:
        return sum(len(v) for v in self._topics().values())


@dataclass
class StdlibSource:
    """The standard library's sources (``docstrings=False``) or only their docstrings."""

    docstrings: bool = False

    @property
    def name(self) -> str:
        return f"<stdlib {'docstrings' if self.docstrings else 'sources'} in {stdlib_dir()}>"

    def documents(self, skips: SkipLog) -> Iterator[str]:
        for path in stdlib_files():
            text = _read_utf8(path)
            if text is None:
                continue
            doc = self._docstrings(text) if self.docstrings else text
            if has_text(doc):
                yield doc

    @staticmethod
    def _docstrings(source: str) -> str:
        """The module's docstrings (cleaned of their indentation), a blank line between two."""
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return ""
        found: list[str] = []
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        for node in ast.walk(tree):
            if isinstance(node, kinds):
                doc = ast.get_docstring(node)
                if doc and has_text(doc):
                    found.append(doc.strip("\n"))
        return "\n\n".join(found) + "\n" if found else ""

    def fingerprint(self) -> str:
        files = stdlib_files()
        h = hashlib.sha256(f"{sys.version}:{stdlib_dir()}:{self.docstrings}".encode())
        for f in files:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        return f"stdlib:{h.hexdigest()}"

    def size(self) -> int | None:
        total = sum(f.stat().st_size for f in stdlib_files())
        return total // 7 if self.docstrings else total


def default_corpus(parts: Sequence[str] = DEFAULT_PARTS, *, max_bytes: int | None = None) -> Corpus:
    """The embedded corpus (see the module docstring): ~12 MB with the default parts.

    ``max_bytes`` stops after about that much text (for quick runs and tests).
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(f"default corpus parts must be among {', '.join(PARTS)}, got {parts!r}")
    sources = []
    for part in parts:
        if part == "topics":
            sources.append(PydocTopicsSource())
        else:
            sources.append(StdlibSource(docstrings=part == "docstrings"))
    if "topics" not in parts and not stdlib_files():
        raise TriformError(f"no standard library sources found under {stdlib_dir()}")
    return Corpus(sources, max_bytes=max_bytes, name=f"default corpus ({'+'.join(parts)})")
