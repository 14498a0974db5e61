"""The declarations a family is made of: name :class:`Rule` s (which HF module(s) hold each
triform module's weights), config :class:`Field` s with their :class:`Codec` s, the HF classes
(:class:`Arch`) and the :class:`Family` that bundles them for the engine."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from triform.config import ModelConfig
from triform.presets import PRESETS

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """triform module (or parameter) ``ours`` holds the weights of HF module(s) ``theirs``.

    ``{i}`` stands for a layer index on both sides. Several ``theirs`` are fused along dim 0
    (q, k, v -> qkv). ``kind``: "linear" (same layout), "conv" (HF ``Conv1D``: the weight is
    transposed) or "row" (HF keeps a (1, n) buffer for our (n,) vector). ``aliases``: other
    HF names of the same tensor (tied copies), accepted on load and never written.
    """

    ours: str
    theirs: tuple[str, ...]
    kind: str = "linear"
    aliases: tuple[str, ...] = ()


def same(ours: str, theirs: str, *aliases: str) -> Rule:
    """One HF module with the same layout (``aliases``: tied copies of it)."""
    return Rule(ours, (theirs,), aliases=aliases)


def fused(ours: str, *theirs: str) -> Rule:
    """Several HF linears concatenated along the output dimension in triform."""
    return Rule(ours, theirs)


def conv(ours: str, theirs: str) -> Rule:
    """An HF ``Conv1D`` (GPT, GPT-2): weight (in, out) instead of (out, in)."""
    return Rule(ours, (theirs,), kind="conv")


def row(ours: str, theirs: str) -> Rule:
    """An HF (1, n) tensor for a triform (n,) vector (BART's ``final_logits_bias``)."""
    return Rule(ours, (theirs,), kind="row")


def place(rule: Rule, ours: str = "", theirs: str = "") -> Rule:
    """``rule`` with its triform names under ``ours`` and its HF names under ``theirs``."""

    def join(prefix: str, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    return Rule(
        join(ours, rule.ours),
        tuple(join(theirs, t) for t in rule.theirs),
        rule.kind,
        tuple(join(theirs, a) for a in rule.aliases),
    )


def stack(ours: str, theirs: str, table: Iterable[Rule]) -> tuple[Rule, ...]:
    """The rules of one layer placed under ``ours`` / ``theirs`` (each may contain ``{i}``)."""
    return tuple(place(r, ours, theirs) for r in table)


@dataclass(frozen=True)
class Codec:
    """How a value is spelled in an HF config (``inward``: HF -> ours, ``outward``: back).

    Each side is a mapping (a value it lacks is unsupported) or a function."""

    inward: Mapping[Any, Any] | Callable[[Any], Any]
    outward: Mapping[Any, Any] | Callable[[Any], Any]


UNSUPPORTED = object()


def apply_codec(side: Mapping[Any, Any] | Callable[[Any], Any], value: Any) -> Any:
    if callable(side):
        return side(value)
    return side.get(value, UNSUPPORTED) if isinstance(value, (str, int, float)) else UNSUPPORTED


@dataclass(frozen=True)
class Field:
    """HF config key ``hf`` is ModelConfig field ``ours``; ``default`` is transformers' default
    when config.json leaves the key out."""

    hf: str
    ours: str
    default: Any = None
    codec: Codec | None = None


@dataclass(frozen=True)
class Arch:
    """One HF class: is its body under the family's base-model prefix, and which head settings
    (ModelConfig fields) it implies."""

    prefixed: bool
    heads: Mapping[str, Any] = field(default_factory=dict)


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Family:
    """Everything the engine needs to convert one HF ``model_type``.

    ``preset``: the triform preset holding the family settings (norm placement, ...).
    ``prefix``: HF base-model prefix of the head classes ("bert", "transformer", ...).
    ``architectures``: supported classes, the preferred export class first, the base model last.
    ``body`` / ``heads``: name rules; body names sit under ``prefix``, head names do not.
    ``gated``: rules that take precedence when the activation is gated (T5 v1.1's ``wi_1``).
    ``ignore``: regexes of HF keys that carry no weights (cached masks, position ids).
    ``adjust_in(hf_config, values)`` / ``adjust_out(config, hf_config)``: what the field
    table cannot say (derived sizes, checks of unsupported options).
    """

    model_type: str
    preset: str
    prefix: str
    architectures: Mapping[str, Arch]
    fields: tuple[Field, ...]
    body: tuple[Rule, ...]
    heads: tuple[Rule, ...] = ()
    gated: tuple[Rule, ...] = ()
    ignore: tuple[str, ...] = (r"(^|\.)position_ids$",)
    adjust_in: Callable[[Mapping[str, Any], dict[str, Any]], None] = _nothing
    adjust_out: Callable[[ModelConfig, dict[str, Any]], None] = _nothing

    @property
    def triform_family(self) -> str:
        return PRESETS[self.preset]["family"]

    def rules(self, config: ModelConfig) -> list[Compiled]:
        """The compiled rules for ``config``, in matching order (first match wins)."""
        gated = config.activation.startswith("gated-")
        return self._compiled_gated if gated else self._compiled_plain

    @cached_property
    def _compiled_plain(self) -> list[Compiled]:
        body = [place(r, theirs=self.prefix) for r in self.body]
        return [Compiled(r) for r in (*body, *self.heads)]

    @cached_property
    def _compiled_gated(self) -> list[Compiled]:
        gated = [Compiled(place(r, theirs=self.prefix)) for r in self.gated]
        return gated + self._compiled_plain

    @cached_property
    def _known(self) -> list[re.Pattern[str]]:
        """HF-side patterns of every name any rule of the family knows."""
        return [p for c in self._compiled_gated for p in c.hf_patterns]

    def knows(self, key: str, max_layers: int | None = None) -> bool:
        """Does some rule name HF key ``key`` (with a layer index below ``max_layers``)?"""
        for pattern in self._known:
            m = pattern.fullmatch(key)
            if m and (max_layers is None or "i" not in m.groupdict() or int(m["i"]) < max_layers):
                return True
        return False

    def ignores(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.ignore)


_LEAF = r"(?:\.(?P<leaf>weight|bias))?"


class Compiled:
    """A rule with its triform-side regex and its HF-side regexes."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.ours = re.compile(_pattern(rule.ours) + _LEAF)
        self.hf_patterns = [re.compile(_pattern(n) + _LEAF) for n in (*rule.theirs, *rule.aliases)]


def _pattern(name: str) -> str:
    return re.escape(name).replace(r"\{i\}", r"(?P<i>\d+)")


@dataclass(frozen=True)
class Match:
    """A triform tensor name resolved by a rule: the HF names of its parts (and aliases)."""

    theirs: list[str]
    aliases: list[str]
    kind: str
    leaf: str | None

    @property
    def names(self) -> list[str]:
        return [*self.theirs, *self.aliases]
