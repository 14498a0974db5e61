"""Sub-commands of the ``triform`` CLI, one module each (see :mod:`triform.cli`)."""

from __future__ import annotations

import argparse


def add_part_option(parser: argparse.ArgumentParser) -> None:
    """``--part NAME``: which model of a run that trained several to load (ELECTRA: the
    ``discriminator``, the default, or the ``generator``)."""
    parser.add_argument(
        "--part",
        metavar="NAME",
        help="the model of a run that trained several: ELECTRA's discriminator (the "
        "default) or generator",
    )
