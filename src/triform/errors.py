"""The one exception type that means "the user gave us something we cannot use".

The CLI turns a :class:`TriformError` into a one-line message and exit status 2; anything
else is a bug and keeps its traceback.
"""


class TriformError(Exception):
    """Bad input: a malformed config, a missing file, an incompatible checkpoint, ..."""


class ConfigError(TriformError, ValueError):
    """A configuration key is unknown or has a bad value."""
