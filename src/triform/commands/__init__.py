"""Sub-commands of the ``triform`` CLI, one module each (see :mod:`triform.cli`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from triform.errors import TriformError


def add_part_option(parser: argparse.ArgumentParser) -> None:
    """``--part NAME``: which model of a run that trained several to load (ELECTRA: the
    ``discriminator``, the default, or the ``generator``)."""
    parser.add_argument(
        "--part",
        metavar="NAME",
        help="the model of a run that trained several: ELECTRA's discriminator (the "
        "default) or generator",
    )


def check_output(path: str | os.PathLike[str]) -> Path:
    """The ``--out`` file, if one can be written there: checked before any work, so that a
    long run never ends on an unwritable path."""
    out = Path(path)
    if out.is_dir():
        raise TriformError(f"--out {out} is a folder; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise TriformError(f"--out {out}: folder {parent} does not exist")
    if (out.exists() and not os.access(out, os.W_OK)) or not os.access(parent, os.W_OK):
        raise TriformError(f"--out {out}: not writable")
    return out
