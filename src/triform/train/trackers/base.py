"""The :class:`Tracker` protocol every tracker module implements, and what they share."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """Where metrics go. ``metrics`` values are ints, floats, strings or ``None`` (a
    non-finite number), as ``metrics.jsonl`` holds them."""

    def config(self, values: Mapping[str, Any]) -> None:
        """Record the run's resolved config (once, before the first step)."""

    def log(self, step: int, metrics: Mapping[str, Any], split: str) -> None:
        """Record ``metrics`` of ``split`` (``train``, ``val``) at ``step``."""

    def text(self, step: int, tag: str, text: str) -> None:
        """Record a piece of text (a generated sample) at ``step``."""

    def close(self) -> None:
        """Finish: flush and close the run."""


def numbers(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """The numeric entries of a record (strings and ``None`` left out)."""
    return {
        name: value
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def flat_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``section.key`` -> value (for trackers whose parameters are flat)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_name(run_dir: Path, initial_step: int = 0) -> str:
    """A tracker run's name: the run folder's, and the step a resumed run starts from."""
    name = run_dir.resolve().name
    return f"{name} (from step {initial_step})" if initial_step else name
