"""The one exception type that means "the user gave us something we cannot use", and the one
way of telling the user about something they did not ask for.

The CLI turns a :class:`TriformError` into a one-line message and exit status 2; anything
else is a bug and keeps its traceback. :func:`warn` is for adjustments the run makes on its
own (a length clamped to what the model can read, a torn line dropped): never silent.
"""

import os
import sys


class TriformError(Exception):
    """Bad input: a malformed config, a missing file, an incompatible checkpoint, ..."""


class ConfigError(TriformError, ValueError):
    """A configuration key is unknown or has a bad value."""


def warn(message: str) -> None:
    """``triform: warning: <message>``, one line on stderr (from the first process alone
    under ``torchrun``)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"triform: warning: {message}", file=sys.stderr, flush=True)
