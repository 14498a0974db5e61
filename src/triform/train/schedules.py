"""Learning-rate schedules: linear warm-up, then linear, cosine or inverse-square-root decay.

Step convention: the scheduler's ``last_epoch`` (0, 1, 2, ...) is the index of the next
optimizer update, and update ``i`` is the ``n = i + 1``-th one. Warm-up multiplies the
peak lr by ``n / warmup_steps``, so the first update uses ``lr / warmup_steps`` and update
``warmup_steps - 1`` (the ``warmup_steps``-th one) is the first at the full ``lr``. Linear
and cosine then decay to ``min_lr_ratio * lr`` at the last update (``n == total_steps``)
and stay there; inverse-sqrt is the original Transformer's
``lr * min(n**-0.5, n * warmup**-1.5) * warmup**0.5``.

Call ``scheduler.step()`` once per optimizer update (not per micro-batch), right after
``optimizer.step()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch

from triform.errors import ConfigError

ScheduleKind = Literal["linear", "cosine", "inverse-sqrt", "constant"]
KINDS = ("linear", "cosine", "inverse-sqrt", "constant")


@dataclass
class ScheduleConfig:
    """The ``[schedule]`` section.

    ``total_steps`` is the decay horizon; left unset (the usual case) it is the run's
    ``train.steps``, passed in by the trainer. ``min_lr_ratio`` is the floor of linear and
    cosine decay, as a fraction of the peak lr. The warm-up lasts ``warmup_steps`` updates,
    or ``warmup_ratio`` of the run's steps; with neither set, the section's default
    (pretraining: 100 steps; fine-tuning: 10 % of the steps). Set one, not both.
    """

    kind: ScheduleKind = "cosine"
    """The decay after warm-up (``constant``: none; ``inverse-sqrt``: the Transformer's)."""
    warmup_steps: int | None = None
    """Updates of linear warm-up to the peak learning rate; unset: ``warmup_ratio``, or the
    section's default (pretraining 100, fine-tuning 10 % of the steps)."""
    warmup_ratio: float | None = None
    """Warm-up as a share of the run's steps (instead of ``warmup_steps``)."""
    total_steps: int | None = None
    """The decay horizon; unset: the run's ``train.steps``."""
    min_lr_ratio: float = 0.1
    """Floor of linear and cosine decay, as a fraction of the peak learning rate."""

    default_warmup_steps: ClassVar[int] = 100
    default_warmup_ratio: ClassVar[float | None] = None

    def warmup(self, total_steps: int) -> int:
        """The warm-up's length in updates for a run of ``total_steps``."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        ratio = self.warmup_ratio if self.warmup_ratio is not None else self.default_warmup_ratio
        if ratio is not None:
            return int(ratio * total_steps)
        return self.default_warmup_steps

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of range (wrong types are left for
        the config loader to report)."""
        if isinstance(self.kind, str) and self.kind not in KINDS:
            raise ConfigError(
                f"schedule.kind must be one of {', '.join(map(repr, KINDS))}, got {self.kind!r}"
            )
        if _is_int(self.warmup_steps) and self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        ratio = self.warmup_ratio
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and not 0 <= ratio < 1:
            raise ConfigError(f"schedule.warmup_ratio must be in [0, 1), got {ratio}")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ConfigError("set schedule.warmup_steps or schedule.warmup_ratio, not both")
        if _is_int(self.total_steps) and self.total_steps < 1:
            raise ConfigError(f"schedule.total_steps must be >= 1, got {self.total_steps}")
        ratio = self.min_lr_ratio
        number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
        if number and not 0 <= ratio <= 1:
            raise ConfigError(f"schedule.min_lr_ratio must be in [0, 1], got {ratio}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def lr_factor(step: int, cfg: ScheduleConfig, total_steps: int) -> float:
    """The multiplier of the peak lr for optimizer update ``step`` (0-based)."""
    n = step + 1
    warmup = cfg.warmup(total_steps)
    if cfg.kind == "inverse-sqrt":
        if warmup == 0:
            return n**-0.5
        return min(n**-0.5, n * warmup**-1.5) * warmup**0.5
    if n < warmup:
        return n / warmup
    peak = max(warmup, 1)  # no warm-up: the first update is at the peak
    if cfg.kind == "constant" or total_steps <= peak:
        return 1.0
    progress = min(1.0, (n - peak) / (total_steps - peak))
    floor = cfg.min_lr_ratio
    if cfg.kind == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`. The horizon is ``cfg.total_steps`` when
    set, else ``total_steps``. Its state dict holds plain numbers only (the lambda is a
    closure, which ``LambdaLR`` does not try to save), so it checkpoints safely."""
    cfg.validate()
    horizon = cfg.total_steps if cfg.total_steps is not None else total_steps
    if horizon is None:
        raise ConfigError("schedule.total_steps is not set and no total_steps was given")
    if horizon < 1:
        raise ConfigError(f"schedule total steps must be >= 1, got {horizon}")

    # later edits of cfg do not change a running schedule
    frozen = replace(cfg, warmup_steps=cfg.warmup(horizon), warmup_ratio=None)

    def factor(step: int) -> float:
        return lr_factor(step, frozen, horizon)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
