"""Where and how code runs, shared by pretraining, fine-tuning and inference: the device,
numeric precision (autocast, loss scaling) and the process group (DDP / FSDP2 under
``torchrun``)."""

from triform.runtime.device import pick_device
from triform.runtime.distributed import (
    all_reduce_mean,
    barrier,
    gradient_sync,
    init_distributed,
    is_main_process,
    rank,
    unwrap_model,
    world_size,
    wrap_model,
)
from triform.runtime.precision import autocast_context, grad_scaler, resolve_precision

__all__ = [
    "all_reduce_mean",
    "autocast_context",
    "barrier",
    "grad_scaler",
    "gradient_sync",
    "init_distributed",
    "is_main_process",
    "pick_device",
    "rank",
    "resolve_precision",
    "unwrap_model",
    "world_size",
    "wrap_model",
]
