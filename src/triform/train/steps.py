"""The optimizer step shared by pretraining and fine-tuning, with non-finite detection.

:class:`OptimizerStep` does what follows the last micro-batch's ``backward``: unscale (fp16),
clip the gradient norm, step the optimizer, the scheduler and the loss scaler, zero the
gradients. It also watches every step's loss and gradient norm for NaN or infinity in a flag
kept on the device (no host sync per step); :meth:`OptimizerStep.check` reads it, and callers
check before anything that would spread a bad state: logging, evaluation, a checkpoint, a
sample, the end of the run.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from triform.errors import ConfigError
from triform.train.optim import clip_gradients


class NonFiniteError(ConfigError):
    """Training produced a NaN or infinite loss or gradient norm. A config error (the
    learning rate, mostly): under several processes every rank sees it and rank 0 reports."""


class OptimizerStep:
    """One optimizer step for ``model``; see the module docstring.

    ``scaler`` is a ``torch.amp.GradScaler`` (disabled unless fp16): with loss scaling an
    infinite gradient norm is the scaler's business (it skips the step), so only the loss is
    watched then. ``hint`` ends the error message (what to change).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        grad_clip: float,
        hint: str = "lower the learning rate",
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scaler, self.grad_clip, self.hint = scaler, grad_clip, hint
        self.step_count = 0  # steps taken by this object
        self._first_bad: torch.Tensor | None = None  # () float: first bad step, inf if none

    def watch(self, value: torch.Tensor | None, step: int) -> None:
        """Record whether ``value`` (a loss or a norm) is finite at ``step``, on its device."""
        if value is None:
            return
        value = value.detach()
        if self._first_bad is None:
            self._first_bad = torch.full((), math.inf, device=value.device)
        bad = ~torch.isfinite(value).all()
        step_value = torch.full((), float(step), device=value.device)
        self._first_bad = torch.where(
            bad, torch.minimum(self._first_bad, step_value), self._first_bad
        )

    def __call__(self, step: int) -> torch.Tensor | None:
        """Finish step ``step`` (1-based: the step count after it); returns the gradient norm
        before clipping (a device tensor), or ``None`` when clipping is off."""
        self.scaler.unscale_(self.optimizer)
        norm = clip_gradients(self.model, self.grad_clip)
        if not self.scaler.is_enabled():
            self.watch(norm, step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return norm

    def check(self) -> None:
        """Raise :class:`NonFiniteError` naming the first step whose loss or gradient norm was
        not finite (one host sync)."""
        if self._first_bad is None:
            return
        first = float(self._first_bad)
        if math.isfinite(first):
            raise NonFiniteError(
                f"the loss or gradient norm became NaN or infinite at step {int(first)}; "
                f"nothing was saved after it; {self.hint}"
            )
