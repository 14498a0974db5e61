"""Run metrics: JSON lines, the trackers of ``train.report_to`` (TensorBoard, W&B, MLflow), a
progress bar and a loss-curve PNG.

    log = MetricsLogger(run_dir, total_steps, enabled=is_main_process(),
                        report_to=["tensorboard", "wandb"], run_config=config.to_dict())
    log.log(step, {"loss": 3.2, "lr": 3e-4, "tokens_per_s": 51000.0})        # train
    log.log(step, {"loss": 3.4, "perplexity": 30.0}, split="val")
    log.text(step, "sample", "Once upon a time")
    log.close()   # -> run_dir/loss_curve.png

``run_dir/metrics.jsonl`` gets one object per call: ``{"step", "split", "time", ...}``
(non-finite numbers are written as ``null``). The same record goes to every tracker
(:mod:`triform.train.trackers`: TensorBoard scalars in ``run_dir/tensorboard`` as
``<split>/<name>``, a W&B run, an MLflow run), after the run config. Pass plain floats:
turning a tensor into a number is a host sync, which belongs at logging steps only.

``run_dir/commands.jsonl`` records how the run was started: one object per start (``argv``,
``orig_argv``: the interpreter's own, ``cwd``, ``time``, ``step``: where it started; a resumed
run keeps the lines of its earlier starts), read back by :func:`read_commands` (the model
card of ``triform convert --to hf`` shows them).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from triform.outputs import read_jsonl_records, repair_jsonl, replacing, write_output
from triform.train.trackers import Tracker, open_trackers
from triform.train.trackers.tensorboard import TENSORBOARD_DIR

METRICS_FILE = "metrics.jsonl"
COMMANDS_FILE = "commands.jsonl"
__all__ = [
    "COMMANDS_FILE",
    "LOSS_CURVE",
    "METRICS_FILE",
    "TENSORBOARD_DIR",
    "MetricsLogger",
    "read_commands",
    "read_metrics",
]
LOSS_CURVE = "loss_curve.png"


def _number(value: Any) -> float | int | str | None:
    if isinstance(value, str):
        return value
    if hasattr(value, "item"):  # tensors, numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _shown(values: Mapping[str, Any]) -> str:
    """``name value, ...`` of a record, floats to four significant digits."""
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
    )


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (or of that file given directly), in order,
    optionally only those of one ``split``. A missing file gives ``[]``; a torn last line
    (a crash mid-write) is skipped; a malformed line elsewhere is an error naming it."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    records, _ = read_jsonl_records(path)
    return [r for r in records if split is None or r.get("split") == split]


def read_commands(run_dir: str | Path) -> list[dict[str, Any]]:
    """The starts recorded in ``run_dir/commands.jsonl`` (see the module docstring), oldest
    first; ``[]`` when there is none."""
    return read_metrics(Path(run_dir) / COMMANDS_FILE)


def record_command(run_dir: Path, initial_step: int) -> None:
    """Add this process's command line to ``run_dir/commands.jsonl``: the only line of a
    fresh run; after the lines of earlier starts before ``initial_step`` for a resumed one."""
    path = run_dir / COMMANDS_FILE
    kept = [c for c in read_commands(run_dir) if c.get("step", 0) < initial_step]
    record = {
        "argv": list(sys.argv),
        "orig_argv": list(getattr(sys, "orig_argv", sys.argv)),
        "cwd": os.getcwd(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": initial_step,
    }
    write_output(path, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in [*kept, record]))


class MetricsLogger:
    """Writes metrics of one run; every method is a no-op when ``enabled`` is false (ranks
    other than 0).

    ``report_to``: the trackers every record also goes to (:data:`~triform.train.trackers.
    TRACKERS`); ``tensorboard=False`` leaves TensorBoard out of them (the earlier switch).
    ``run_config``: the run's resolved config, given to each tracker first.

    ``initial_step``: the step this run starts from (a resumed run's checkpoint step; 0 for
    a fresh run). Records of later steps left in ``metrics.jsonl`` by an earlier run in the
    folder are dropped (and TensorBoard hides its events of those steps), so the history
    reads as one uninterrupted run.
    """

    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
        initial_step: int = 0,
        report_to: Sequence[str] = ("tensorboard",),
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.enabled = enabled
        self._file = None
        self._trackers: list[Tracker] = []
        self._bar = None
        self._closed = False
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS_FILE
        records = repair_jsonl(path)  # a torn last line dropped, with a warning
        kept = [r for r in records if r.get("step", 0) <= initial_step]
        if len(kept) < len(records):
            write_output(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
        self._file = path.open("a", encoding="utf-8", buffering=1)  # line-buffered
        record_command(self.run_dir, initial_step)
        names = [name for name in report_to if tensorboard or name != "tensorboard"]
        self._trackers = open_trackers(names, self.run_dir, initial_step)
        config = json.loads(json.dumps(dict(run_config or {}), default=str))  # plain data
        for tracker in self._trackers:
            tracker.config(config)
        if progress:
            self._bar = tqdm(
                total=total_steps,
                initial=min(initial_step, total_steps),
                unit="step",
                dynamic_ncols=True,
                mininterval=0.1 if sys.stderr.isatty() else 10.0,
                file=sys.stderr,
            )

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")

    def log(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        """Record ``metrics`` (name -> number) of ``split`` at ``step``. Train records move
        the progress bar to ``step`` and show loss and tokens/s; others are printed above it."""
        if not self.enabled:
            return
        values = {str(k): _number(v) for k, v in metrics.items()}
        self._write({"step": int(step), "split": split, "time": round(time.time(), 3), **values})
        for tracker in self._trackers:
            tracker.log(step, values, split)
        if self._bar is None:
            if split != "train":  # no bar: validation lines still reach the console
                print(f"step {step} {split}: {_shown(values)}", flush=True)
            return
        if split == "train":
            self._bar.update(max(0, min(step, self.total_steps) - self._bar.n))
            postfix = {}
            if values.get("loss") is not None:
                postfix["loss"] = f"{values['loss']:.4f}"
            if values.get("lr") is not None:
                postfix["lr"] = f"{values['lr']:.2e}"
            if values.get("tokens_per_s") is not None:
                postfix["tok/s"] = _si(values["tokens_per_s"])
            self._bar.set_postfix(postfix, refresh=True)
        else:
            self._bar.write(f"step {step} {split}: {_shown(values)}")

    def text(self, step: int, tag: str, text: str) -> None:
        """Record a piece of text (a generated sample, say) at ``step``."""
        if not self.enabled:
            return
        self._write({"step": int(step), "split": "text", "time": round(time.time(), 3),
                     "tag": tag, "text": text})  # fmt: skip
        for tracker in self._trackers:
            tracker.text(step, tag, text)

    def flush(self) -> None:
        """Push the trackers' buffered records out (JSON lines are written per line)."""
        for tracker in self._trackers:
            flush = getattr(tracker, "flush", None)
            if flush is not None:
                flush()

    def close(self) -> Path | None:
        """Close the bar, the file and the trackers, and draw the loss curve.
        Returns the PNG's path (``None`` when disabled or nothing was logged). Idempotent."""
        if not self.enabled or self._closed:
            return None
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        for tracker in self._trackers:
            tracker.close()
        if self._file is not None:
            self._file.close()
        return plot_loss_curve(self.run_dir)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plot_loss_curve(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Draw train and val loss (and the learning rate, if logged) against step from
    ``run_dir/metrics.jsonl`` into ``loss_curve.png``. The loss axis is logarithmic when
    the loss is positive and spans more than a factor of 3. ``None`` if no loss was logged.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)

    def series(split: str, key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in records
                  if r.get("split") == split and isinstance(r.get(key), (int, float))]  # fmt: skip
        return [p[0] for p in points], [p[1] for p in points]

    train, val, lr = series("train", "loss"), series("val", "loss"), series("train", "lr")
    if not train[0] and not val[0]:
        return None
    figure = Figure(figsize=(8, 6 if lr[0] else 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    if lr[0]:
        ax, ax_lr = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        ax, ax_lr = figure.subplots(), None
    if train[0]:
        ax.plot(*train, label="train", linewidth=1.2)
    if val[0]:
        ax.plot(*val, "o-", label="val", linewidth=1.2, markersize=3)
    losses = train[1] + val[1]
    if min(losses) > 0 and max(losses) / min(losses) > 3:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        if max(losses) / min(losses) < 20:  # within about a decade: label the minor ticks
            ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(run_dir.resolve().name)
    if ax_lr is not None:
        ax_lr.plot(*lr, color="tab:gray", linewidth=1.0)
        ax_lr.set_ylabel("lr")
        ax_lr.grid(True, alpha=0.3)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    (ax_lr or ax).set_xlabel("step")
    path = Path(out) if out is not None else run_dir / LOSS_CURVE
    with replacing(path) as tmp:
        figure.savefig(tmp, dpi=120)
    return path
