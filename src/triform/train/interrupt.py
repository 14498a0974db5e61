"""Stopping a run cleanly on SIGINT (Ctrl-C) and SIGTERM (what schedulers send before
preemption): the signal is noted, the current step finishes, a checkpoint is saved and the run
ends with :class:`Interrupted` (exit status 130 for SIGINT, 143 for SIGTERM)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

from triform.errors import TriformError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(TriformError):
    """A run stopped by a signal after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, run_dir: Path) -> None:
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint} saved" if checkpoint else "nothing to save"
        super().__init__(f"{name} at step {step}: {where}; continue with --resume {run_dir}")
        self.exit_code = 128 + signum


class StopSignals:
    """While active, SIGINT and SIGTERM set :attr:`received` instead of ending the process.

    A second SIGINT ends the process at once (the usual escape). Only the main thread can
    install handlers: elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
