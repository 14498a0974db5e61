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
"""

from __future__ import annotations

import contextlib
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
