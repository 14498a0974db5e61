"""Training: optimizer and schedules, precision, checkpoints, metrics, distributed helpers.

The components are importable from here; the loop itself is :mod:`triform.train.loop`
(not imported here, so the components stay light to import).
"""

from triform.runs import latest_checkpoint, load_weights, save_weights
from triform.runtime.distributed import (
    all_reduce_mean,
    all_reduce_sums,
    barrier,
    checkpoint_blocks,
    gradient_sync,
    init_distributed,
    is_main_process,
    rank,
    split_batch,
    unwrap_model,
    world_size,
    wrap_model,
)
from triform.runtime.precision import autocast_context, grad_scaler, resolve_precision
from triform.train.checkpoint import CheckpointState, load_checkpoint, save_checkpoint
from triform.train.metrics import MetricsLogger, read_metrics
from triform.train.optim import OptimConfig, build_optimizer, clip_gradients, param_groups
from triform.train.schedules import ScheduleConfig, build_scheduler, lr_factor

__all__ = [
    "CheckpointState",
    "MetricsLogger",
    "OptimConfig",
    "ScheduleConfig",
    "all_reduce_mean",
    "all_reduce_sums",
    "autocast_context",
    "barrier",
    "build_optimizer",
    "build_scheduler",
    "checkpoint_blocks",
    "clip_gradients",
    "grad_scaler",
    "gradient_sync",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "lr_factor",
    "param_groups",
    "rank",
    "read_metrics",
    "resolve_precision",
    "save_checkpoint",
    "save_weights",
    "split_batch",
    "unwrap_model",
    "world_size",
    "wrap_model",
]
