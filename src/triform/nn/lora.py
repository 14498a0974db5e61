"""LoRA: low-rank adapters on triform's linear layers (Hu et al., 2021).

A frozen weight ``W`` (out, in) learns through a low-rank update instead of being trained
itself: ``y = x W^T + b + (alpha / r) * dropout(x) A^T B^T``, with ``A`` (r, in) drawn
Kaiming-uniform and ``B`` (out, r) zeros, so that the adapted model starts as the base model
exactly. :meth:`LoRALinear.merge` folds the update into ``W``: the merged layer is a plain
linear again (nothing to add at inference, nothing new to export).

triform projects queries, keys and values with one fused linear (``qkv``, and ``kv`` in
cross-attention). LoRA on ``q``, ``k`` and ``v`` is one update per target, each on its own
slice of the fused output: :class:`LoRALinear` keeps the fused weight and holds the updates
of the targeted slices stacked (``lora_a`` (s, r, in), ``lora_b`` (s, out / parts, r) for
``s`` targeted slices), computed in one pass as ``x A^T`` (all slices at once) times a
block matrix that puts each ``B_i`` in its slice's rows (zeros for an untargeted slice).

    apply_lora(model, LoRAConfig(r=8, targets=["q", "v"]))  # freezes the rest of model
    ...train...
    merge_lora(model)                                       # plain Linear layers again

Targets: ``q``, ``k``, ``v`` (slices of self-attention's ``qkv``, cross-attention's ``q``
and ``kv``), ``o`` (attention's output projection) and ``ffn`` (every linear of the
feed-forward block: ``up``, ``down`` and a gated block's ``gate``).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from triform.errors import ConfigError
from triform.nn.attention import Attention
from triform.nn.feedforward import FeedForward
from triform.nn.linear import Linear

Target = Literal["q", "k", "v", "o", "ffn"]
TARGETS: tuple[str, ...] = typing.get_args(Target)


@dataclass
class LoRAConfig:
    """The ``[lora]`` section: low-rank adapters on the body's linear layers (Hu et al.,
    2021). With it, every weight of the body is frozen and only the adapters (and a
    fine-tuning run's new head) train."""

    r: int = 8
    """The rank of each update ``B A``."""
    alpha: float = 16.0
    """The update is scaled by ``alpha / r``."""
    dropout: float = 0.05
    """Dropout on the adapters' input (the base layer sees the input as it is)."""
    targets: list[Target] = field(default_factory=lambda: list(TARGETS))
    """Which linears get adapters: ``q``, ``k``, ``v`` (slices of the fused projection),
    ``o`` (attention output) and ``ffn`` (the feed-forward block's linears)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of range (types are the loader's)."""
        if isinstance(self.r, int) and not isinstance(self.r, bool) and self.r <= 0:
            raise ConfigError(f"lora.r must be a positive integer, got {self.r}")
        if isinstance(self.alpha, (int, float)) and not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha}")
        if isinstance(self.dropout, (int, float)) and not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.targets, list):
            unknown = [t for t in self.targets if t not in TARGETS]
            if unknown:
                raise ConfigError(
                    f"lora.targets: unknown target {unknown[0]!r}; expected some of "
                    + ", ".join(TARGETS)
                )
            if not self.targets:
                raise ConfigError("lora.targets is empty; name some of " + ", ".join(TARGETS))
            if len(set(self.targets)) != len(self.targets):
                raise ConfigError(f"lora.targets has duplicates: {self.targets}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(Linear):
    """A :class:`~triform.nn.linear.Linear` (its ``weight`` and ``bias``, under the same
    names) plus low-rank updates of some of its output slices; see the module docstring.

    The output is split into ``parts`` equal slices (3 for a fused ``qkv``, 1 for a plain
    linear); ``slices`` lists the ones that get an update. ``lora_a`` (s, r, in) and
    ``lora_b`` (s, out / parts, r) hold them, one per listed slice.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        parts: int = 1,
        slices: tuple[int, ...] = (0,),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if out_features % parts or not slices or not all(0 <= s < parts for s in slices):
            raise ValueError(f"cannot split {out_features} outputs into {parts}: {slices}")
        self.parts, self.slices = parts, tuple(slices)
        self.r, self.scale = r, alpha / r
        size = out_features // parts
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(len(slices), r, in_features, **like))
        self.lora_b = nn.Parameter(torch.zeros(len(slices), size, r, **like))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora()

    @classmethod
    def wrap(
        cls,
        linear: Linear,
        *,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        parts: int = 1,
        slices: tuple[int, ...] = (0,),
    ) -> LoRALinear:
        """A LoRA layer over ``linear``: the same weight and bias parameters (shared, not
        copied), fresh adapters."""
        out, inp = linear.weight.shape
        with torch.device("meta"):  # the base parameters come from ``linear``
            layer = cls(inp, out, bias=False, r=r, alpha=alpha, dropout=dropout, parts=parts,
                        slices=slices)  # fmt: skip
        layer.weight, layer.bias = linear.weight, linear.bias
        like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        layer.lora_a = nn.Parameter(torch.empty(layer.lora_a.shape, **like))
        layer.lora_b = nn.Parameter(torch.zeros(layer.lora_b.shape, **like))
        layer.reset_lora()
        return layer.train(linear.training)

    @torch.no_grad()
    def reset_lora(self) -> None:
        """``A`` Kaiming-uniform (as ``nn.Linear`` draws its weight), ``B`` zeros."""
        if self.lora_a.is_meta:
            return
        for a in self.lora_a:  # each (r, in) on its own: its fan-in is ``in``
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_b.zero_()

    @property
    def packable(self) -> bool:  # type: ignore[override]
        """Whether packed inference (:func:`~triform.runtime.packed.packed_linears`) may
        replace this layer's forward: only once merged, when it is a plain linear."""
        return self.merged

    def block_b(self) -> torch.Tensor:
        """(out, s * r): each ``B_i`` in the rows of its slice and the columns of its
        ``A_i``; zeros elsewhere (untargeted slices, other slices' ranks)."""
        count, size, r = self.lora_b.shape
        if self.parts == 1:
            return self.lora_b[0]
        rows = []
        for part in range(self.parts):
            if part in self.slices:
                i = self.slices.index(part)
                rows.append(F.pad(self.lora_b[i], (i * r, (count - 1 - i) * r)))
            else:
                rows.append(self.lora_b.new_zeros(size, count * r))
        return torch.cat(rows)

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) B A`` as a full (out, in) matrix."""
        return self.block_b() @ self.lora_a.flatten(0, 1) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        out = self.project(x, self.weight)
        if self.merged:
            return out
        low = F.linear(self.lora_dropout(x), self.lora_a.flatten(0, 1))  # (..., s * r)
        return out + F.linear(low * self.scale, self.block_b())

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (each ``B_i A_i`` into its slice); the layer
        then computes the plain linear. Merging twice is refused."""
        if self.merged:
            raise RuntimeError("this LoRA layer is merged already")
        self.weight += self.delta_weight().to(self.weight.dtype)
        self.merged = True

    def to_linear(self) -> Linear:
        """A plain :class:`Linear` holding this layer's (merged) weight and bias."""
        if not self.merged:
            raise RuntimeError("merge() the LoRA layer before taking its linear")
        out, inp = self.weight.shape
        with torch.device("meta"):
            linear = Linear(inp, out, bias=self.bias is not None)
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        slices = "" if self.parts == 1 else f", slices={list(self.slices)} of {self.parts}"
        return f"{super().extra_repr()}, r={self.r}, scale={self.scale:g}{slices}"


def _slots(module: nn.Module, targets: list[str]) -> list[tuple[str, int, tuple[int, ...]]]:
    """(attribute, parts, targeted slices) of each linear of ``module`` that ``targets``
    adapt."""
    slots = []
    if isinstance(module, Attention):
        if module.cross:
            if "q" in targets:
                slots.append(("q", 1, (0,)))
            kv = tuple(i for i, t in enumerate(("k", "v")) if t in targets)
            if kv:
                slots.append(("kv", 2, kv))
        else:
            qkv = tuple(i for i, t in enumerate(("q", "k", "v")) if t in targets)
            if qkv:
                slots.append(("qkv", 3, qkv))
        if "o" in targets:
            slots.append(("out", 1, (0,)))
    elif isinstance(module, FeedForward) and "ffn" in targets:
        slots += [(name, 1, (0,)) for name in ("gate", "up", "down") if getattr(module, name)]
    return slots


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of ``model`` and put LoRA adapters (trainable) on the linears
    ``config.targets`` name, in place; returns the adapted layers' names. A block shared by
    several layers (ALBERT) gets one set of adapters, as it has one set of weights. A model
    with no such linear raises :class:`ConfigError`."""
    model.requires_grad_(False)
    adapted = []
    for name, module in list(model.named_modules()):
        for attribute, parts, slices in _slots(module, config.targets):
            linear = getattr(module, attribute)
            if isinstance(linear, LoRALinear):
                raise ConfigError(f"{name}.{attribute} has LoRA adapters already")
            layer = LoRALinear.wrap(
                linear, r=config.r, alpha=config.alpha, dropout=config.dropout, parts=parts,
                slices=slices,
            )  # fmt: skip
            setattr(module, attribute, layer)
            adapted.append(f"{name}.{attribute}" if name else attribute)
    if not adapted:
        raise ConfigError(f"lora.targets {config.targets} match no linear layer of this model")
    return adapted


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """The LoRA layers of ``model`` with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA layer of ``model`` into its base weight and put the plain
    :class:`Linear` back in its place (the adapters' parameters go); returns how many were
    merged. The model then has the base model's structure and names."""
    layers = lora_layers(model)
    for name, layer in layers:
        if not layer.merged:
            layer.merge()
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attribute, layer.to_linear())
    return len(layers)
