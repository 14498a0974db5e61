"""AdamW with the usual two parameter groups, and gradient clipping.

Weight decay is applied to the weights of linear layers (and, by default, to token
embeddings); never to biases or normalisation gains, and by default not to position
tables (learned absolute positions, T5's relative position bias).

    optimizer = build_optimizer(model, OptimConfig(lr=6e-4))
    ...backward...
    clip_gradients(model, cfg.grad_clip)   # no host sync
    optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from triform.errors import ConfigError

# Module types whose parameters are never decayed, whatever ``no_decay`` says.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.RMSNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass
class OptimConfig:
    """The ``[optim]`` section: AdamW and gradient clipping.

    ``no_decay`` holds lower-case substrings; a parameter whose dotted name, or the type
    name of the module that owns it (or of any module around it), contains one of them
    gets no weight decay. Norm parameters and biases never get weight decay.
    ``decay_embeddings`` decides for the remaining embedding tables (token, segment).
    ``fused``: ``None`` = torch's fused AdamW when every parameter allows it (see
    :func:`fused_supported`): one kernel per step instead of a loop over parameters; the
    same updates within float rounding (~1e-8 after 10 steps), and faster on a CPU (see
    BENCHMARKS.md, "Training").
    ``grad_clip``: max global gradient norm; 0 turns clipping off.
    """

    lr: float = 3e-4
    """Peak learning rate (the schedule scales it)."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay (never on biases and norms)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's two moment decay rates."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    no_decay: list[str] = field(default_factory=lambda: ["bias", "norm", "position"])
    """Lower-case substrings of parameter or module names that get no weight decay."""
    decay_embeddings: bool = True
    """Weight decay on the token and segment embedding tables."""
    grad_clip: float = 1.0
    """Largest global gradient norm; 0: no clipping."""
    fused: bool | None = None
    """torch's fused AdamW (one kernel per step); unset: wherever every parameter allows it."""

    def __post_init__(self) -> None:
        if isinstance(self.betas, tuple):
            self.betas = list(self.betas)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of range (types are checked by the
        config loader; values of the wrong type are left for it to report)."""

        def number(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        if number(self.lr) and not 0 < self.lr < math.inf:
            raise ConfigError(f"optim.lr must be a finite number > 0, got {self.lr}")
        if number(self.weight_decay) and self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if number(self.eps) and not self.eps > 0:
            raise ConfigError(f"optim.eps must be > 0, got {self.eps}")
        if number(self.grad_clip) and not 0 <= self.grad_clip < math.inf:
            raise ConfigError(f"optim.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        betas = self.betas
        if (
            isinstance(betas, list)
            and all(number(b) for b in betas)
            and (len(betas) != 2 or not all(0 <= b < 1 for b in betas))
        ):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or type(module).__name__.lower().endswith("norm")


def decay_split(model: nn.Module, cfg: OptimConfig) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters that get weight decay, and of those that don't.

    Each distinct parameter is listed once, under its first name; a tied parameter gets
    no decay if any of its uses says so (a token table tied to an output projection
    follows ``decay_embeddings``).
    """
    patterns = [p.lower() for p in cfg.no_decay]
    first_name: dict[int, str] = {}
    exempt: dict[int, bool] = {}
    # Walk every (module, path) pair, duplicates included, keeping the chain of ancestors.
    stack: list[tuple[str, nn.Module, tuple[str, ...]]] = [("", model, ())]
    seen_paths: set[tuple[int, str]] = set()
    while stack:
        prefix, module, ancestors = stack.pop()
        types = (*ancestors, type(module).__name__.lower())
        for leaf, param in module.named_parameters(recurse=False, remove_duplicate=False):
            if not param.requires_grad:
                continue
            name = f"{prefix}{leaf}"
            key = id(param)
            if (key, name) in seen_paths:
                continue
            seen_paths.add((key, name))
            lowered = name.lower()
            no_decay = (
                _is_norm(module)
                or leaf == "bias"
                or any(p in lowered or any(p in t for t in types) for p in patterns)
                or (isinstance(module, nn.Embedding) and not cfg.decay_embeddings)
            )
            first_name.setdefault(key, name)
            exempt[key] = exempt.get(key, False) or no_decay
        children = list(module.named_children())
        for child_name, child in reversed(children):  # reversed: pop() keeps model order
            stack.append((f"{prefix}{child_name}.", child, types))
    # Keep the order of model.parameters() for a stable optimizer state layout.
    decay, no_decay_names = [], []
    for param in model.parameters():
        key = id(param)
        if key in first_name:
            (no_decay_names if exempt[key] else decay).append(first_name[key])
    return decay, no_decay_names


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``{"params", "weight_decay", "group"}`` with ``group``
    ``"decay"`` or ``"no_decay"``; empty groups are left out. Tied parameters appear once."""
    decay_names, no_decay_names = decay_split(model, cfg)
    by_name = dict(model.named_parameters())  # first name of each distinct parameter
    groups = [
        {"params": [by_name[n] for n in decay_names], "weight_decay": cfg.weight_decay,
         "group": "decay"},
        {"params": [by_name[n] for n in no_decay_names], "weight_decay": 0.0,
         "group": "no_decay"},
    ]  # fmt: skip
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, groups: list[dict[str, Any]] | None = None
) -> torch.optim.AdamW:
    """AdamW over ``groups`` (default: :func:`param_groups`; a group may set its own
    ``lr``); fused kernels where supported unless ``cfg.fused`` says no.

    Under FSDP2 build it *after* ``fully_shard`` (it must see the sharded parameters).
    """
    cfg.validate()
    if groups is None:
        groups = param_groups(model, cfg)
    if not groups:
        raise ConfigError("the model has no trainable parameters to optimize")
    params = [p for g in groups for p in g["params"]]
    fused = cfg.fused
    if fused is None:
        fused = fused_supported(params)
    kwargs: dict[str, Any] = {"fused": True} if fused else {}
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, **kwargs
    )


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW takes ``params``: floating point, all on CUDA, or all
    plain (not sharded DTensor) tensors on the CPU."""
    params = list(params)
    if not params or not all(p.is_floating_point() for p in params):
        return False
    kinds = {p.device.type for p in params}
    if kinds == {"cuda"}:
        return True
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support has no DTensor
        return kinds == {"cpu"}
    return kinds == {"cpu"} and not any(isinstance(p, DTensor) for p in params)


def clip_gradients(
    parameters: nn.Module | Iterable[torch.Tensor], max_norm: float
) -> torch.Tensor | None:
    """Clip the global gradient norm to ``max_norm`` (skipped when it is 0 or less).

    Returns the total norm before clipping as a tensor on the parameters' device: read it
    (``.item()``) only when logging, or it costs a host sync. Works for plain, DDP and
    FSDP2 (DTensor) parameters. Call it after the last micro-batch's ``backward`` and
    before ``optimizer.step()`` (with fp16 loss scaling: after ``scaler.unscale_``).
    """
    if not max_norm or max_norm <= 0:
        return None
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return None
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
