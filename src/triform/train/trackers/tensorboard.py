"""TensorBoard: event files in ``<run>/tensorboard``, scalars as ``<split>/<name>``.

``tensorboard --logdir runs/`` shows them. TensorBoard is a dependency of triform; where it
is missing anyway, the run goes on with ``metrics.jsonl`` alone and says so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from triform.train.trackers.base import numbers

TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker:
    """A ``SummaryWriter`` on ``<run>/tensorboard``."""

    package = "tensorboard"
    extra = "tensorboard"
    required = False  # a dependency of triform: missing, the run goes on without it

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path, initial_step: int = 0) -> TensorBoardTracker | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("tensorboard is not installed; writing metrics.jsonl only", file=sys.stderr)
            return None
        # TensorBoard hides events of earlier runs in this folder from this step on.
        writer = SummaryWriter(
            log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=initial_step + 1, flush_secs=30
        )
        return cls(writer)

    def config(self, values: Mapping[str, Any]) -> None:
        shown = json.dumps(values, indent=2, default=str)
        self.writer.add_text("run_config", "\n".join("    " + line for line in shown.split("\n")))

    def log(self, step: int, metrics: Mapping[str, Any], split: str) -> None:
        for name, value in numbers(metrics).items():
            self.writer.add_scalar(f"{split}/{name}", value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
