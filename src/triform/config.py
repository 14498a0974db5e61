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
    """The family name (``bert``, ``gpt2``, ``t5``, ...): picks the tokenizer's special
    tokens and the HuggingFace class names on export."""
    form: Form = "decoder"
    """Encoder-only, decoder-only or encoder-decoder."""
    vocab_size: int = 50257
    """Token ids the embedding table holds (a run sets it from its tokenizer)."""
    hidden_size: int = 768
    """Width of the residual stream (d_model)."""
    num_layers: int = 12
    """Blocks in the stack (the encoder's, for an encoder-decoder)."""
    num_decoder_layers: int | None = None
    """Blocks in an encoder-decoder's decoder; unset: ``num_layers``."""
    num_heads: int = 12
    """Attention heads per layer."""
    head_dim: int | None = None
    """Width of one head; unset: ``hidden_size // num_heads`` (T5 sets it apart)."""
    ffn_size: int = 3072
    """Inner width of the feed-forward block (d_ff)."""
    embedding_size: int | None = None
    """Width of the token embeddings when smaller than ``hidden_size`` (factorized
    embeddings: ALBERT, ELECTRA); unset: ``hidden_size``."""
    max_positions: int = 1024
    """Longest sequence the position table covers (learned and sinusoidal positions)."""
    type_vocab_size: int = 0
    """Segment (token type) embeddings; 0: none."""
    position: PositionKind = "learned"
    """How positions enter: a learned table, sinusoids, T5's relative buckets, rotary, or
    none."""
    position_offset: int = 0
    """First row of the learned position table that is used (RoBERTa, BART: 2)."""
    positions_from_padding: bool = False
    """Count positions over real tokens only, padding pointing at the pad row (RoBERTa)."""
    relative_buckets: int = 32
    """Buckets of T5's relative position bias."""
    relative_max_distance: int = 128
    """Distance beyond which T5's relative positions share one bucket."""
    rotary_fraction: float = 1.0
    """Share of each head's dimensions that rotary positions rotate."""
    rotary_base: float = 10000.0
    """Base of the rotary frequencies."""
    norm: NormKind = "layernorm"
    """LayerNorm or RMSNorm (T5)."""
    norm_eps: float = 1e-5
    """Epsilon of every norm."""
    norm_placement: NormPlacement = "pre"
    """Norm before each sub-layer (GPT-2, T5) or after the residual sum (BERT, GPT)."""
    embedding_norm: bool = False
    """A norm right after the embeddings (BERT, BART)."""
    final_norm: bool = True
    """A norm after the last block (pre-norm stacks)."""
    activation: Activation = "gelu"
    """Feed-forward activation; ``gated-*`` adds a gate projection (T5 v1.1)."""
    bias: bool = True
    """Biases in the linear layers and norms (T5: none)."""
    attention_scale: float | None = None
    """Factor on the attention scores; unset: ``1 / sqrt(head_dim)`` (T5: 1.0)."""
    scale_embeddings: bool = False
    """Multiply token embeddings by ``sqrt(hidden_size)`` (the original Transformer)."""
    tie_embeddings: bool = True
    """The output vocabulary projection shares the token embedding table."""
    tie_encoder_decoder_embeddings: bool = True
    """Encoder and decoder share one token table (encoder-decoders)."""
    lm_head_bias: bool = False
    """A bias on the output vocabulary projection."""
    lm_head_transform: bool = False
    """Dense + activation + norm before the vocabulary projection (BERT's MLM head)."""
    scale_tied_logits: bool = False
    """Scale hidden states by ``hidden_size ** -0.5`` before a tied head (T5 v1.0)."""
    share_layers: bool = False
    """One set of block weights for every layer (ALBERT)."""
    encoder_head: EncoderHead = "mlm"
    """An encoder's token head: masked-LM, replaced-token detection (ELECTRA) or none."""
    pair_head: PairHead = "none"
    """An encoder's sentence-pair head: next-sentence or sentence-order prediction, or none."""
    pooler: bool = False
    """Dense + tanh on the first token (BERT, ALBERT)."""
    attention_pattern: list[AttentionKind] = field(default_factory=lambda: ["dense"])
    """Attention kind of each layer, repeated over the stack (GPT-3: dense, local)."""
    local_window: int = 256
    """Band of a ``local`` layer: keys fewer than this many positions from the query."""
    dropout: float = 0.1
    """Dropout on embeddings and residual branches, in [0, 1)."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities, in [0, 1)."""
    init_std: float = 0.02
    """Standard deviation of the initial weights."""
    scaled_residual_init: bool = False
    """Residual output projections start at ``init_std / sqrt(2 * layers)`` (GPT-2)."""
    pad_token_id: int | None = None
    """Padding id (a run sets it from its tokenizer)."""
    bos_token_id: int | None = None
    """Beginning-of-sequence id (a run sets it from its tokenizer)."""
    eos_token_id: int | None = None
    """End-of-sequence id: generation stops there (a run sets it from its tokenizer)."""
    decoder_start_token_id: int | None = None
    """First decoder input of an encoder-decoder (T5: pad, BART: eos; set by a run)."""

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

    @property
    def decoder_start_id(self) -> int:
        """The first decoder input of an encoder-decoder (T5: pad, BART: eos)."""
        for value in (self.decoder_start_token_id, self.pad_token_id, self.eos_token_id):
            if value is not None:
                return value
        return 0

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
    if typing.get_origin(annotation) in (list, tuple) and typing.get_args(annotation):
        return "a list, each item " + _describe(typing.get_args(annotation)[0])
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
    """The run folder (relative to the working directory)."""
    steps: int | None = None
    """Optimizer steps of the run."""
    batch_size: int = 16
    """The global batch: examples per optimizer step over all processes."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (they split ``batch_size``)."""
    eval_every: int = 100
    """Evaluate every this many steps (and at the end)."""
    log_every: int = 10
    """Log the training loss every this many steps."""
    checkpoint_every: int = 500
    """Write a resumable checkpoint every this many steps (and at the end)."""
    keep_last: int = 3
    """Resumable checkpoints kept, the newest ones."""
    seed: int = 0
    """Seed of every random draw (initialisation, data order, masks, dropout)."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast precision; ``auto``: bf16 where the GPU or CPU has it natively, else fp32."""
    threads: int | None = None
    """Torch threads on a CPU, per process; unset: torch's default."""
    keep_freed_memory: bool = True
    """Keep freed memory in glibc malloc's heap for the next step (CPU training speed)."""
    progress: bool = True
    """Draw a progress bar (``false`` for logs and CI; evaluations are still printed)."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = field(
        default_factory=lambda: ["tensorboard"]
    )
    """Trackers that record the metrics and the run config besides ``metrics.jsonl``:
    ``tensorboard`` (events in the run folder), ``wandb`` (``pip install 'triform[wandb]'``),
    ``mlflow`` (``pip install 'triform[mlflow]'``); ``[]``: none. Rank 0 reports."""
    tensorboard: bool = True
    """``false`` leaves ``tensorboard`` out of ``report_to`` (the earlier switch, kept)."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) when this much training time is spent; unset: no limit."""
    compile: bool = False
    """Run the model through ``torch.compile``."""
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    """Data parallelism under ``torchrun``; ``auto``: DDP when there are several processes."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass instead of keeping its activations."""
    fsdp_param_dtype: Literal["fp32", "bf16"] = "fp32"
    """FSDP: the dtype parameters are gathered in for compute (reductions stay fp32)."""

    @property
    def trackers(self) -> list[str]:
        """The trackers this run reports to: ``report_to``, less TensorBoard when
        ``tensorboard = false``."""
        return [name for name in self.report_to if self.tensorboard or name != "tensorboard"]

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
