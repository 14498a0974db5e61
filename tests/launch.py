"""Running the ``triform`` CLI on several local gloo processes, as ``torchrun`` would: the
helper the data-parallel tests share."""

from __future__ import annotations

import os
import socket
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from triform.cli import main
from triform.errors import TriformError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: list[str], logs: str, fail_at: int) -> None:
    """One rank of a ``torchrun``-like launch: the CLI with its output kept per rank.
    ``fail_at >= 0``: rank 1 raises at that batch index (a failure on one rank only)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    if fail_at >= 0 and rank == 1:
        from triform.train.task import PretrainingTask as Task

        original = Task.train_batch

        def failing(self, index):
            if index == fail_at:
                raise TriformError("shard file vanished")
            return original(self, index)

        Task.train_batch = failing
    folder = Path(logs)
    with (
        open(folder / f"out{rank}", "w") as out,
        open(folder / f"err{rank}", "w") as err,
        redirect_stdout(out),
        redirect_stderr(err),
    ):
        status = main(args)
    (folder / f"rc{rank}").write_text(str(status))


def launch(args: list[str], logs: Path, fail_at: int = -1, world: int = 2) -> list[dict]:
    """Run the CLI on ``world`` processes; per rank: exit status, stdout and stderr."""
    logs.mkdir(parents=True, exist_ok=True)
    # fork: the ranks share the imported modules (a spawn re-imports torch, seconds each)
    context = mp.start_processes(
        _worker,
        (world, free_port(), args, str(logs), fail_at),
        nprocs=world,
        join=False,
        start_method="fork",
    )
    for _ in range(120):  # a hang fails the test instead of blocking the suite
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("a rank did not finish")
    return [
        {
            "rc": int((logs / f"rc{r}").read_text()),
            "out": (logs / f"out{r}").read_text(),
            "err": (logs / f"err{r}").read_text(),
        }
        for r in range(world)
    ]
