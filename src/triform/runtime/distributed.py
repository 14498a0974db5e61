"""Multi-process training through PyTorch's own engine, applied from outside the model.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` set),
:func:`init_distributed` joins the process group; otherwise everything here degrades to
the single-process answer (rank 0 of 1, no-op barrier, model returned unwrapped), so one
code path serves one CPU process and many GPUs alike. Models and objectives know nothing
of this module.

    init_distributed()
    model = build_model(cfg).to(device)
    model = wrap_model(model, "fsdp")          # FSDP2: shard each block, then the root
    optimizer = build_optimizer(model, optim)  # after fully_shard: it must see DTensors

A config describes the global batch; :func:`split_batch` gives each rank its share, and the
readers (:mod:`triform.data.readers`) read only that share.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from triform.errors import ConfigError, TriformError

Strategy = Literal["auto", "none", "ddp", "fsdp"]
STRATEGIES = ("auto", "none", "ddp", "fsdp")


def is_distributed() -> bool:
    """Whether a process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    if is_distributed():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    """This process's rank on its node (its GPU index under torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """True on rank 0: the process that logs, prints and writes checkpoints."""
    return rank() == 0


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> bool:
    """Join the process group when launched by ``torchrun``; return whether distributed.

    Idempotent. The backend defaults to NCCL when CUDA is available (and binds this
    process to GPU ``LOCAL_RANK``), else gloo. Without torchrun's variables it does nothing.
    """
    if is_distributed():
        return True
    env = os.environ
    if "WORLD_SIZE" not in env or "RANK" not in env or "MASTER_ADDR" not in env:
        return False
    if not dist.is_available():
        raise TriformError("launched by torchrun but torch.distributed is not available")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    kwargs = {"device_id": torch.device("cuda", local_rank())} if cuda else {}
    dist.init_process_group(
        backend=backend or ("nccl" if cuda else "gloo"),
        timeout=timedelta(minutes=timeout_minutes),
        **kwargs,
    )
    return True


def shutdown_distributed() -> None:
    """Leave the process group (if any), e.g. at the end of a run."""
    if is_distributed():
        dist.destroy_process_group()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself without a process group)."""
    if not is_distributed():
        return value
    box = [value if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (one small all-reduce under a process group)."""
    if not is_distributed():
        return flag
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait for every process; a no-op in a single process."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (nothing without a process group); no
    host sync. A collective: every rank must call it. On NCCL, pass a CUDA tensor."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(value: torch.Tensor | float) -> torch.Tensor | float:
    """The mean of ``value`` over all processes (a new tensor; floats give floats).

    A collective: every rank must call it. On NCCL, pass a CUDA tensor.
    """
    if not is_distributed():
        return value.detach().clone() if isinstance(value, torch.Tensor) else value
    if isinstance(value, torch.Tensor):
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / dist.get_world_size()
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item() / dist.get_world_size()


def split_batch(batch_size: int, grad_accum: int = 1, world: int | None = None) -> int:
    """Rows each rank reads per micro-batch: the global ``batch_size`` split over ``world``
    processes (default: this run's) and ``grad_accum`` micro-batches. A one-line
    :class:`ConfigError` naming the numbers when it does not divide evenly."""
    world = world_size() if world is None else world
    parts = world * grad_accum
    if batch_size % parts:
        raise ConfigError(
            f"train.batch_size {batch_size} (the global batch) does not split over "
            f"{world} process(es) x {grad_accum} accumulation step(s): make it a multiple "
            f"of {parts}"
        )
    return batch_size // parts


def all_reduce_sums(sums: dict[str, float], count: float) -> tuple[dict[str, float], float]:
    """``sums`` (name -> number) and ``count`` summed over all processes (one collective;
    every rank must pass the same names). Unchanged in a single process."""
    if not is_distributed():
        return dict(sums), count
    names = sorted(sums)
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else "cpu"
    values = torch.tensor([sums[n] for n in names] + [count], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    *totals, total = values.tolist()
    reduced = dict(zip(names, totals, strict=True))
    return {name: reduced[name] for name in sums}, total  # the caller's order


_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe")


def error_line(err: BaseException) -> tuple[str | None, int] | None:
    """How this process reports ``err`` when a command fails: (the one line to print, or
    ``None`` to stay quiet; the exit status). ``None`` for an error to handle as usual.

    A :class:`TriformError` is printed by the rank that raised it (``rank N:`` in front on
    other ranks than 0); a :class:`ConfigError` only by rank 0, since every rank reads the
    same config and raises it alike. When another process has died, a pending collective
    fails: rank 0 says so in one line, the other ranks stay quiet.
    """
    multi = world_size() > 1
    where = f"rank {rank()}: " if multi and rank() != 0 else ""
    if isinstance(err, TriformError):
        quiet = multi and rank() != 0 and isinstance(err, ConfigError)
        return (None if quiet else f"{where}{err}"), getattr(err, "exit_code", 2)
    distributed_error = getattr(dist, "DistError", ())
    lost = isinstance(err, distributed_error) or (
        isinstance(err, RuntimeError) and any(s in str(err).lower() for s in _PEER_LOST)
    )
    if multi and is_distributed() and lost:
        line = "another process stopped (its error is above); stopping" if not where else None
        return line, 1
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside ``torch.compile`` and DDP wrappers (FSDP2 shards in place,
    so a ``fully_shard``-ed model is its own plain model)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _block_lists(model: nn.Module) -> Iterator[nn.ModuleList]:
    """Every ``layers`` list of blocks (triform's ``Stack.layers``), except lists whose
    blocks run several times per pass (ALBERT's cross-layer sharing): those stay in the
    root's FSDP group."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList):
            if getattr(module, "num_layers", len(layers)) > len(layers):
                continue
            yield layers


def _all_block_lists(model: nn.Module) -> Iterator[nn.ModuleList]:
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList):
            yield layers


def _recompute(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation and generation: nothing to save
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(model: nn.Module) -> int:
    """Activation checkpointing from outside the model: every block of every stack keeps
    only its inputs in the forward pass and recomputes the rest in the backward pass
    (``torch.utils.checkpoint``, non-reentrant). Parameter names are unchanged. Apply it
    before :func:`wrap_model`. Returns the number of blocks wrapped."""
    count = 0
    for layers in _all_block_lists(model):
        for block in layers:
            if not isinstance(block.forward, functools.partial):  # idempotent
                block.forward = functools.partial(_recompute, block.forward)
                count += 1
    return count


def wrap_model(
    model: nn.Module,
    strategy: Strategy = "auto",
    *,
    find_unused_parameters: bool = False,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Apply data parallelism from outside the model.

    ``"none"``: the model itself. ``"ddp"``: ``DistributedDataParallel`` (returns the
    wrapper; its ``.module`` is the model). ``"fsdp"``: FSDP2 ``fully_shard`` on every block
    of every stack, then on the root; the model is sharded in place and returned (build
    the optimizer afterwards). ``param_dtype`` (FSDP only) gathers parameters in that
    dtype (e.g. ``torch.bfloat16``) with fp32 gradient reduction. ``"auto"``: DDP when
    more than one process, else none. Without a process group every strategy returns the
    model unchanged, so the same config runs with and without torchrun.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"train.parallel must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}"
        )
    if strategy == "none" and world_size() > 1:
        raise ConfigError(
            f"train.parallel 'none' on {world_size()} processes would train {world_size()} "
            "separate models; use 'auto', 'ddp' or 'fsdp' under torchrun"
        )
    if strategy == "none" or not is_distributed():
        return model
    if strategy == "auto":
        if world_size() == 1:
            return model
        strategy = "ddp"
    if strategy == "ddp":
        on_cuda = next(model.parameters()).device.type == "cuda"
        return nn.parallel.DistributedDataParallel(
            model,
            device_ids=[torch.cuda.current_device()] if on_cuda else None,
            find_unused_parameters=find_unused_parameters,
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
    )
    for layers in list(_block_lists(model)):
        for block in layers:
            fully_shard(block, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    return model


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` (or what it wraps) has been ``fully_shard``-ed."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap_model(model), FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce for micro-batches that are not the last of a step.

    ``with gradient_sync(wrapped, micro == grad_accum - 1): loss.backward()`` — DDP's
    ``no_sync``, FSDP2's ``set_requires_gradient_sync``; a no-op for a plain model.
    """
    inner = model._orig_mod if hasattr(model, "_orig_mod") else model
    if enabled:
        yield
    elif isinstance(inner, nn.parallel.DistributedDataParallel):
        with inner.no_sync():
            yield
    elif is_fsdp(inner):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield
