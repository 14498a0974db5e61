"""Configuration: the :class:`ModelConfig` every family is an instance of, plus the generic
machinery that turns TOML tables and ``--set key=value`` overrides into validated dataclasses.

A family is never a subclass or a copy of model code: it is a ``ModelConfig`` whose fields
say where the norm goes, which positions, which activation, whether embeddings are factorized
or layers shared, and so on (see :mod:`triform.presets`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomllib

from triform.errors import ConfigError

Form = Literal["encoder", "decoder", "encoder-decoder"]
PositionKind = Literal["learned", "sinusoidal", "relative", "rotary", "none"]
NormKind = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]
Activation = Literal["relu", "gelu", "gelu_tanh", "gated-gelu", "gated-gelu_tanh", "gated-silu"]
EncoderHead = Literal["mlm", "rtd", "none"]
PairHead = Literal["nsp", "sop", "none"]
AttentionKind = Literal["dense", "local"]


# Upper bounds of the size fields, far above every published model (GPT-3 175B: 96 layers,
# hidden 12,288): a value beyond them is a typo or a damaged file, refused before allocating.
SIZE_LIMITS = {
    "vocab_size": 10_000_000,
    "hidden_size": 131_072,
    "num_layers": 1_024,
    "num_decoder_layers": 1_024,
    "num_heads": 1_024,
    "head_dim": 8_192,
    "ffn_size": 1_048_576,
    "max_positions": 1_048_576,
    "embedding_size": 131_072,
}


@dataclass
class ModelConfig:
    """The architecture of one Transformer. Every published family is a preset of this.

    Sizes follow the usual names: ``hidden_size`` (d_model), ``ffn_size`` (d_ff),
    ``num_heads``; ``head_dim`` defaults to ``hidden_size // num_heads`` (T5 sets it apart).
    """

    family: str = "custom"
    form: Form = "decoder"
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_decoder_layers: int | None = None  # encoder-decoder only; None = num_layers
    num_heads: int = 12
    head_dim: int | None = None
    ffn_size: int = 3072
    embedding_size: int | None = None  # < hidden_size: factorized embeddings (ALBERT, ELECTRA)
    max_positions: int = 1024
    type_vocab_size: int = 0  # 0 = no segment embeddings
    position: PositionKind = "learned"
    position_offset: int = 0  # learned tables indexed from here (RoBERTa, BART: 2)
    positions_from_padding: bool = False  # RoBERTa: pads keep the pad position, others count on
    relative_buckets: int = 32
    relative_max_distance: int = 128
    rotary_fraction: float = 1.0
    rotary_base: float = 10000.0
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: NormPlacement = "pre"
    embedding_norm: bool = False  # LayerNorm right after the embeddings (BERT, BART)
    final_norm: bool = True  # norm after the last block (pre-norm stacks)
    activation: Activation = "gelu"
    bias: bool = True
    attention_scale: float | None = None  # None = 1/sqrt(head_dim); T5 uses 1.0
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(hidden) (Transformer)
    tie_embeddings: bool = True
    tie_encoder_decoder_embeddings: bool = True
    lm_head_bias: bool = False  # a learned/zero bias on the output vocabulary projection
    lm_head_transform: bool = False  # BERT-style dense + act + norm before the vocabulary
    scale_tied_logits: bool = False  # T5 v1.0: hidden * d_model**-0.5 before a tied head
    share_layers: bool = False  # ALBERT cross-layer sharing
    encoder_head: EncoderHead = "mlm"
    pair_head: PairHead = "none"
    pooler: bool = False  # dense + tanh on the first token (BERT/ALBERT)
    attention_pattern: list[AttentionKind] = field(default_factory=lambda: ["dense"])
    local_window: int = 256
    dropout: float = 0.1
    attention_dropout: float = 0.1
    init_std: float = 0.02
    scaled_residual_init: bool = False  # GPT-2: residual projections std / sqrt(2 * layers)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    # -- derived sizes -------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def embed_size(self) -> int:
        return self.embedding_size if self.embedding_size is not None else self.hidden_size

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

    def layer_attention(self, index: int) -> AttentionKind:
        """The attention kind of layer ``index``: the pattern repeats over the stack."""
        return self.attention_pattern[index % len(self.attention_pattern)]

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that makes no sense (sizes far
        beyond any published model included, so that nothing absurd is ever allocated)."""
        check_types(self, "model")
        positive = [
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "ffn_size",
            "max_positions",
            "local_window",
            "relative_buckets",
            "relative_max_distance",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(
                    f"model.{name} = {value:,} is beyond any model (at most {limit:,})"
                )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_heads ({self.num_heads})"
            )
        if self.embedding_size is not None and self.embedding_size <= 0:
            raise ConfigError("model.embedding_size must be positive")
        if not self.attention_pattern:
            raise ConfigError("model.attention_pattern must name at least one kind")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.position == "rotary" and (self.head_size * self.rotary_fraction) % 2:
            raise ConfigError("model.rotary_fraction * head_dim must be even")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data, "model")

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (validated)."""
        return from_dict(type(self), {**self.to_dict(), **overrides}, "model")


# ---------------------------------------------------------------------------------------
# Generic dataclass <-> dict/TOML machinery, shared by every config section.
# ---------------------------------------------------------------------------------------
T = TypeVar("T")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        (item, *_) = typing.get_args(annotation) or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "none")


@dataclass
class LoopSection:
    """The ``[train]`` keys every training loop shares (pretraining and fine-tuning), one
    meaning each: where the run goes, how big a step is, how often it logs, evaluates and
    checkpoints, and where and how it runs. Each loop's section adds its own keys and
    defaults."""

    out_dir: str = "runs/run"
    steps: int | None = None
    batch_size: int = 16  # sequences per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step (they split batch_size)
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3  # checkpoints kept (0: all)
    seed: int = 0
    device: str = "auto"  # auto = cuda if available, else cpu
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads: int | None = None  # torch intra-op threads on CPU (per process)
    keep_freed_memory: bool = True  # glibc malloc keeps freed memory (runtime.allocator)
    progress: bool = True
    tensorboard: bool = True
    max_minutes: float | None = None  # stop (and checkpoint) when this budget is spent
    compile: bool = False  # torch.compile the model
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: DDP under torchrun
    activation_checkpointing: bool = False  # recompute each block in the backward pass
    fsdp_param_dtype: Literal["fp32", "bf16"] = "fp32"  # FSDP: compute dtype (fp32 reductions)

    def check(self) -> None:
        """Raise :class:`ConfigError` for a loop key out of range (shared by every loop)."""
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError("train.max_minutes must be positive")


def check_types(instance: Any, section: str) -> None:
    """Check every field of a dataclass instance against its annotation."""
    hints = typing.get_type_hints(type(instance))
    for f in fields(instance):
        value = getattr(instance, f.name)
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(
                f"{section}.{f.name} must be {_describe(hints[f.name])}, got {value!r}"
            )


def from_dict(cls: type[T], data: dict[str, Any], section: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown key {section}.{key}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if isinstance(value, int) and not isinstance(value, bool) and hints[key] is float:
            value = float(value)
        if isinstance(value, tuple):
            value = list(value)
        values[key] = value
    instance = cls(**values)
    check_types(instance, section)
    return instance


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value in TOML syntax; bare words are strings)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a table")
        node[path[-1]] = value
    return tree


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises ConfigError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: malformed TOML: {err}") from None
