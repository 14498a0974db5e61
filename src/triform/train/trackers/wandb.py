"""Weights & Biases (``pip install 'triform[wandb]'``): one W&B run per training run.

The run is named after the run folder, in the project ``$WANDB_PROJECT`` (default
``triform``); its files go to ``$WANDB_DIR``, by default the run folder. Everything else is
W&B's own settings: ``WANDB_MODE=offline`` records without an account or network (``wandb
sync`` uploads later), ``WANDB_ENTITY``, ``WANDB_API_KEY``, ... Metrics are logged as
``<split>/<name>`` at their step, the run config as the W&B config, samples as HTML. A resumed
run is a new W&B run that starts at its checkpoint's step.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from triform.errors import TriformError
from triform.train.trackers.base import numbers, run_name

DEFAULT_PROJECT = "triform"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class WandbTracker:
    """A W&B run (``wandb.init`` ... ``run.finish``)."""

    package = "wandb"
    extra = "wandb"
    required = True

    def __init__(self, run: Any, wandb: Any) -> None:
        self.run, self.wandb = run, wandb

    @classmethod
    def open(cls, run_dir: Path, initial_step: int = 0) -> WandbTracker:
        import wandb

        name = run_name(run_dir, initial_step)
        try:
            run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
                name=name,
                dir=os.environ.get("WANDB_DIR") or str(run_dir),
                job_type="train",
            )
        except Exception as err:  # W&B raises its own kinds (no account, no network, ...)
            raise TriformError(
                f"wandb could not start a run ({_first_line(err)}); WANDB_MODE=offline "
                "records without an account"
            ) from None
        return cls(run, wandb)

    def config(self, values: Mapping[str, Any]) -> None:
        self.run.config.update(dict(values), allow_val_change=True)

    def log(self, step: int, metrics: Mapping[str, Any], split: str) -> None:
        values = {f"{split}/{name}": value for name, value in numbers(metrics).items()}
        if values:
            self.run.log(values, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        page = f'<pre style="white-space: pre-wrap">{html.escape(text)}</pre>'
        self.run.log({tag: self.wandb.Html(page)}, step=step)

    def close(self) -> None:
        self.run.finish()
