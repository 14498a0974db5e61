"""Sub-commands of the ``triform`` CLI, one module each (see :mod:`triform.cli`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from triform.outputs import check_output_file


def add_part_option(parser: argparse.ArgumentParser) -> None:
    """``--part NAME``: which model of a run that trained several to load (ELECTRA: the
    ``discriminator``, the default, or the ``generator``)."""
    parser.add_argument(
        "--part",
        metavar="NAME",
        help="the model of a run that trained several: ELECTRA's discriminator (the "
        "default) or generator",
    )


def add_overwrite_option(parser: argparse.ArgumentParser, what: str = "--out") -> None:
    """``--overwrite``: replace an existing output (atomically; see :mod:`triform.outputs`)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing {what} (written to a temporary file, then renamed over it)",
    )


def check_output(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    option: str = "--out",
) -> Path:
    """The ``--out`` file, if the command may write it: checked before any work, so that a
    long run never ends on an unwritable path, and never replaces one of its ``inputs``
    (see :func:`triform.outputs.check_output_file`)."""
    return check_output_file(path, inputs=inputs, overwrite=overwrite, option=option)
