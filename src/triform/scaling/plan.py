"""Compute-optimal planning: for a FLOPs budget, the N and D a Chinchilla law calls for,
the loss it predicts, and the nearest preset-like model shape as a runnable config."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from triform import presets
from triform.config import ModelConfig
from triform.errors import ConfigError
from triform.models import build_model
from triform.scaling.laws import CHINCHILLA, ChinchillaLaw
from triform.scaling.sweep import ModelShape
from triform.train.run_config import build_run_config

# The run a plan fills in when no base config is given: a GPT-2-style decoder with a
# byte-level BPE on the embedded corpus (point data.corpus at your own text).
DEFAULT_BASE: dict[str, Any] = {
    "model": {"preset": "gpt2", "dropout": 0.0, "attention_dropout": 0.0},
    "tokenizer": {"kind": "byte-bpe", "vocab_size": 8000},
    "data": {"corpus": "default", "seq_len": 1024, "val_fraction": 0.01},
    "objective": {"name": "causal-lm"},
    "train": {"out_dir": "runs/compute-optimal", "batch_size": 256},
    "optim": {"lr": 6e-4, "weight_decay": 0.1},
    "schedule": {"kind": "cosine", "warmup_steps": 2000},
}
MAX_LAYERS = 128
# Shapes within this factor of N_opt count as "at N_opt"; among them the aspect ratio
# (hidden / layers) nearest the target wins.
PARAMS_TOLERANCE = 1.1


@dataclass
class Plan:
    """A compute-optimal allocation and the run that realises it."""

    flops: float
    law: ChinchillaLaw
    params: float  # N_opt (non-embedding)
    tokens: float  # D_opt
    loss: float  # the law at (N_opt, D_opt)
    shape: ModelShape
    shape_params: int  # the shape's non-embedding parameters
    steps: int
    tokens_per_step: int
    run: dict[str, Any]  # a run config tree (write it with toml_writer.dumps)

    @property
    def shape_tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def shape_loss(self) -> float:
        return float(self.law.loss(self.shape_params, self.shape_tokens))

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "law": self.law.to_dict(),
            "params": self.params,
            "tokens": self.tokens,
            "loss": self.loss,
            "shape": {
                "num_layers": self.shape.num_layers,
                "hidden_size": self.shape.hidden_size,
                "num_heads": self.shape.num_heads,
                "ffn_size": self.shape.ffn_size,
                "params": self.shape_params,
            },
            "steps": self.steps,
            "shape_tokens": self.shape_tokens,
            "shape_loss": self.shape_loss,
        }


def _cost_model(base: ModelConfig, head_dim: int, ffn_ratio: int):
    """Non-embedding parameters of a stack of ``base``'s family as a function of
    ``(layers, hidden)`` with ``hidden / head_dim`` heads and ``ffn = ffn_ratio × hidden``.

    Per layer and outside the layers the count is a quadratic in ``hidden`` (weights grow
    as hidden², biases and norms as hidden), so three widths counted on the meta device
    determine it exactly for every width (Newton's forward differences, in integers).
    """
    per_layer, rest = [], []
    for hidden in (head_dim, 2 * head_dim, 3 * head_dim):
        one, two = (
            build_model(
                base.replace(
                    num_layers=layers,
                    hidden_size=hidden,
                    num_heads=hidden // head_dim,
                    ffn_size=ffn_ratio * hidden,
                    head_dim=None,
                ),
                device="meta",
            ).num_parameters(non_embedding=True)
            for layers in (1, 2)
        )
        per_layer.append(two - one)
        rest.append(2 * one - two)

    def quadratic(values: list[int], units: int) -> int:  # through (1, v0), (2, v1), (3, v2)
        first, second = values[1] - values[0], values[2] - 2 * values[1] + values[0]
        return values[0] + (units - 1) * first + (units - 1) * (units - 2) // 2 * second

    def count(layers: int, hidden: int) -> int:
        units = hidden // head_dim
        return layers * quadratic(per_layer, units) + quadratic(rest, units)

    return count


def nearest_shape(
    params: float,
    base: ModelConfig | None = None,
    *,
    head_dim: int = 64,
    ffn_ratio: int = 4,
    aspect_ratio: float = 64.0,
) -> tuple[ModelShape, int]:
    """The preset-like shape (hidden a multiple of ``head_dim``, ``ffn = ffn_ratio ×
    hidden``) with about ``params`` non-embedding parameters: among the shapes within 10%
    of it, the one whose hidden / layers is nearest ``aspect_ratio`` (GPT-2 small's is 64);
    when none is that close, the nearest in parameters. Returns the shape and its count."""
    if not params > 0:
        raise ConfigError(f"a shape needs a positive parameter count, got {params}")
    base = base or presets.get("gpt2")
    count_params = _cost_model(base, head_dim, ffn_ratio)
    candidates = []
    for layers in range(1, MAX_LAYERS + 1):
        ideal = math.sqrt(params / (12 * layers)) / head_dim  # 12·L·h² ≈ N
        for units in sorted({max(1, math.floor(ideal)), max(1, math.ceil(ideal))}):
            hidden = units * head_dim
            count = count_params(layers, hidden)
            shape = ModelShape(layers, hidden, units, ffn_ratio * hidden)
            off = abs(math.log(count / params))
            aspect = abs(math.log(hidden / layers / aspect_ratio))
            candidates.append((off, aspect, shape, count))
    close = [c for c in candidates if c[0] <= math.log(PARAMS_TOLERANCE)]
    off, aspect, shape, count = (
        min(close, key=lambda c: (c[1], c[0])) if close else min(candidates, key=lambda c: c[:2])
    )
    return shape, count


def make_plan(
    flops: float,
    law: ChinchillaLaw = CHINCHILLA,
    base: dict[str, Any] | None = None,
    *,
    head_dim: int = 64,
    aspect_ratio: float = 64.0,
) -> Plan:
    """The compute-optimal plan for ``flops`` under ``law``, as a run of ``base`` (a run
    config tree; default :data:`DEFAULT_BASE`) with the nearest shape and ``train.steps``
    covering ``D_opt`` tokens."""
    if not (isinstance(flops, (int, float)) and math.isfinite(flops) and flops > 0):
        raise ConfigError(f"the compute budget must be a positive number of FLOPs, got {flops}")
    tree = copy.deepcopy(base if base is not None else DEFAULT_BASE)
    tree.pop("sweep", None)
    config = build_run_config(copy.deepcopy(tree))
    n_opt, d_opt = (float(x) for x in law.optimal(flops))
    shape, shape_params = nearest_shape(
        n_opt, config.model, head_dim=head_dim, aspect_ratio=aspect_ratio
    )
    per_step = config.train.batch_size * config.data.seq_len
    steps = max(1, round(d_opt / per_step))
    model = tree.setdefault("model", {})
    model.pop("head_dim", None)
    model.update(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_heads=shape.num_heads,
        ffn_size=shape.ffn_size,
    )
    if config.model.position == "learned" and config.model.max_positions < config.data.seq_len:
        model["max_positions"] = config.data.seq_len
    train = tree.setdefault("train", {})
    train["steps"] = steps
    train.pop("max_minutes", None)
    schedule = tree.setdefault("schedule", {})
    schedule.pop("total_steps", None)
    if config.schedule.warmup_steps >= steps:
        schedule["warmup_steps"] = max(1, steps // 20)
    build_run_config(copy.deepcopy(tree))  # the proposed run is valid
    return Plan(
        float(flops),
        law,
        n_opt,
        d_opt,
        float(law.loss(n_opt, d_opt)),
        shape,
        shape_params,
        steps,
        per_step,
        tree,
    )
