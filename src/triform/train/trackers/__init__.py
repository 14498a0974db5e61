"""Experiment trackers: where a run's metrics go besides ``metrics.jsonl``.

``train.report_to`` names them (default ``["tensorboard"]``). The
:class:`~triform.train.metrics.MetricsLogger` writes ``metrics.jsonl`` and fans every record
out to each tracker, on rank 0 only, so that every tracker holds the same numbers as the file:
the run config once (:meth:`Tracker.config`), then each ``log`` (``<split>/<name>`` at its
step) and each ``text`` (a generated sample). Non-finite numbers, ``null`` in the file, are
left out.

A tracker is one small module here, a class with the four methods of :class:`Tracker`, its
package and pip extra, and one line in :data:`TRACKERS`. A tracker whose package is missing
is a one-line error naming the extra when the config is read (:func:`check_report_to`),
before any work; TensorBoard, a dependency of triform, is skipped with a note instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from triform.errors import ConfigError
from triform.train.trackers.base import Tracker, flat_config, numbers
from triform.train.trackers.mlflow import MlflowTracker
from triform.train.trackers.tensorboard import TensorBoardTracker
from triform.train.trackers.wandb import WandbTracker

# name -> tracker class (its ``package`` to import, its pip ``extra``)
TRACKERS: dict[str, Any] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
}


def check_report_to(names: Sequence[str], key: str = "train.report_to") -> None:
    """Refuse an unknown or repeated tracker, or one whose package is not installed (a
    one-line :class:`ConfigError` naming the extra to install)."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"{key}: unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError(f"{key} names {repeated[0]!r} twice")
    for name in names:
        tracker = TRACKERS[name]
        if tracker.required and importlib.util.find_spec(tracker.package) is None:
            raise ConfigError(
                f"{key} names {name}, which needs the {tracker.package} package: "
                f"pip install 'triform[{tracker.extra}]'"
            )


def open_trackers(names: Sequence[str], run_dir: Path, initial_step: int = 0) -> list[Tracker]:
    """Start a tracker of each name for the run in ``run_dir`` (a run resumed at
    ``initial_step`` starts a new tracker run from there)."""
    check_report_to(names)
    trackers = []
    for name in names:
        tracker = TRACKERS[name].open(run_dir, initial_step)
        if tracker is not None:
            trackers.append(tracker)
    return trackers


__all__ = ["TRACKERS", "Tracker", "check_report_to", "flat_config", "numbers", "open_trackers"]
