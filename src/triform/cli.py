"""The ``triform`` command.

Each sub-command lives in its own module under :mod:`triform.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` on it. ``main`` only
dispatches and turns :class:`~triform.errors.TriformError` into a one-line error, exit 2;
an OS error is one line too (exit 2), and an interrupt at any moment, the start-up imports
included, is ``triform: interrupted`` (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import signal
import sys
import threading
from collections.abc import Iterator

from triform import __version__
from triform.errors import TriformError

# Sub-command modules, in the order `triform --help` lists them.
COMMAND_MODULES = (
    "triform.commands.models",
    "triform.commands.pretrain",
    "triform.commands.finetune",
    "triform.commands.predict",
    "triform.commands.generate",
    "triform.commands.features",
    "triform.commands.attention",
    "triform.commands.tokenizer",
    "triform.commands.data",
    "triform.commands.convert",
    "triform.commands.evaluate",
    "triform.commands.scaling",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triform",
        description="Pretrain, fine-tune and run Transformer language models of all three forms.",
    )
    parser.add_argument("--version", action="version", version=f"triform {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def version() -> str:
    """The installed package's version, else (a source tree on ``PYTHONPATH``) the code's."""
    try:
        return importlib.metadata.version("triform")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def main(argv: list[str] | None = None) -> int:
    with _interrupts_held() as interrupted:
        parser = build_parser()  # imports every command module: torch, seconds on a busy CPU
    if interrupted:
        print("triform: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except TriformError as err:
        if "torch" not in sys.modules:  # nothing distributed can have run
            print(f"triform: error: {err}", file=sys.stderr)
            return getattr(err, "exit_code", 2)
        return _report(err)
    except RuntimeError as err:  # under torchrun: a collective that lost its peer
        if "torch" not in sys.modules:
            raise
        return _report(err)
    except BrokenPipeError:
        # the reader went away (``triform ... | head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        print(f"triform: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as err:
        print(f"triform: error: input is not UTF-8 text ({err.reason})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("triform: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _interrupts_held() -> Iterator[list[int]]:
    """Hold Ctrl-C while the command's modules are imported (an interrupt raised inside an
    extension's initialisation aborts the process with a C++ error, or leaves a traceback);
    the list it yields is non-empty if one came."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous or signal.default_int_handler)


def describe_os_error(err: OSError) -> str:
    """One line for an OS error, naming the path(s): "Permission denied: runs/x/run.json"."""
    reason = err.strerror or type(err).__name__
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    return f"{reason}: {' -> '.join(map(str, paths))}" if paths else f"{reason} ({err})"


def _report(err: Exception) -> int:
    """One line on stderr for ``err`` (in a multi-process run: from the rank that has
    something to say), and the exit status."""
    from triform.runtime.distributed import error_line

    report = error_line(err)
    if report is None:
        raise err
    line, status = report
    if line is not None:
        print(f"triform: error: {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
