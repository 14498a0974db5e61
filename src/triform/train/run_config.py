"""One run = one TOML file: the sections of a pretraining run and their validation.

```toml
[model]       preset = "gpt2-tiny", then any ModelConfig field to override
              (or init = "<checkpoint folder>": its architecture, weights and tokenizer)
[tokenizer]   path = "tokenizer.json"  or  kind / vocab_size / family to train one
[data]        corpus, seq_len, validation or val_fraction, ...
[objective]   name = "causal-lm" | "mlm" | ... and that objective's own keys
[train]       steps, batch_size, eval/checkpoint cadence, device, precision, ...
[optim]       AdamW settings      [schedule]  warm-up and decay
```

Relative input paths in the file (tokenizer, corpus, shards, sources) are resolved against
the file's folder, so a config in ``configs/`` works from any working directory; paths given
with ``--set`` and ``train.out_dir`` are relative to the working directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from triform import presets
from triform.config import LoopSection, ModelConfig, apply_overrides, from_dict, load_toml
from triform.errors import ConfigError
from triform.objectives import OBJECTIVES, objective_class
from triform.tokenizers.sampling import check_sampling_spec
from triform.train.init import ModelInit, init_model_config, init_tokenizer_path
from triform.train.optim import OptimConfig
from triform.train.schedules import ScheduleConfig
from triform.train.trackers import check_report_to

log = logging.getLogger("triform.train")

SECTIONS = ("model", "tokenizer", "data", "objective", "train", "optim", "schedule")


@dataclass
class TokenizerSection:
    """Load ``path``, which must exist (a missing one is an error, never a tokenizer trained
    in its place); without ``path``, train a tokenizer of ``kind`` on the corpus. The run
    folder keeps its own copy either way (``triform tokenizer train`` makes one to share)."""

    path: str | None = None
    """A ``tokenizer.json`` to load; it must exist (unset: a tokenizer is trained for the
    run)."""
    kind: Literal["bpe", "byte-bpe", "wordpiece", "unigram", "char"] = "byte-bpe"
    """The algorithm of a tokenizer trained for the run."""
    vocab_size: int = 8000
    """Vocabulary of a trained tokenizer, special tokens included."""
    family: str | None = None
    """Special tokens and framing of this family; unset: the model's family."""
    lowercase: bool | None = None
    """Lower-case the text; unset: the kind's default (WordPiece lower-cases)."""


@dataclass
class DataSection:
    """Where the text is, how it is split, and how long the training sequences are."""

    corpus: list[str] | str = "default"
    """Files, folders or globs of text (``.txt``-like, ``.jsonl``, gzipped or not), of
    Parquet, Arrow, CSV or TSV files, or ``datasets`` folders (``save_to_disk``; Parquet and
    Arrow need ``pip install 'triform[data]'``); ``"default"``: the embedded corpus."""
    text_field: str = "text"
    """The field of ``.jsonl`` records, or the column of Parquet, Arrow, ``datasets`` and
    CSV / TSV tables, that holds the text (one record or row = one document)."""
    split_documents: Literal["file", "blank-line"] = "file"
    """A text file's document is the whole file, or a block between blank lines (BERT's
    format)."""
    if_missing: Literal["error", "default"] = "error"
    """When a corpus path matches nothing: stop, or train on the embedded corpus."""
    shards_dir: str | None = None
    """Where the token shards go; unset: ``<out_dir>/data``."""
    validation: list[str] | str | None = None
    """Files, folders or globs that are the validation set (the corpus is then all
    training text)."""
    val_fraction: float | None = None
    """Share of the corpus documents held out for validation; unset: 0.05, or 0 with
    ``validation``."""
    workers: int = 2
    """Processes that tokenize the corpus into shards."""
    seq_len: int = 128
    """Tokens per training sequence (an encoder-decoder's source length)."""
    target_len: int = 64
    """Decoder length of encoder-decoder objectives (span corruption derives its own)."""
    sources: str | None = None
    """seq2seq: a TSV of ``source<TAB>target`` lines, read instead of a corpus."""
    subword_sampling: dict[str, Any] | None = None
    """Segment each training window afresh every step: ``{alpha = 0.1}`` (Unigram
    sampling, with an optional ``nbest_size``) or ``{dropout = 0.1}`` (BPE-dropout)."""


@dataclass
class TrainSection(LoopSection):
    """The loop: how long, how big, how often to evaluate, sample and checkpoint (the keys
    every loop shares are :class:`~triform.config.LoopSection`'s). ``batch_size`` is the
    global batch: sequences per optimizer step over all processes, each rank reading
    ``batch_size / world / grad_accum`` of them per micro-batch."""

    out_dir: str = "runs/pretrain"
    steps: int = 1000
    eval_batches: int | Literal["all"] = 8
    """Batches of ``batch_size`` validation windows at each evaluation, spread evenly across
    the split (the same windows every time), or ``"all"``: every window."""
    sample_tokens: int = 64
    """Generative objectives print a sample of this many tokens at each evaluation."""
    sample_prompt: str = ""
    """The prompt of those samples."""


@dataclass
class RunConfig:
    """A whole pretraining run, validated."""

    model: ModelConfig
    model_preset: str | None
    tokenizer: TokenizerSection
    data: DataSection
    objective: dict[str, Any]
    train: TrainSection
    optim: OptimConfig
    schedule: ScheduleConfig
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    init: ModelInit = field(default_factory=ModelInit)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved run as plain data (saved next to checkpoints)."""
        return self.raw


def resolve_path(value: str, base: Path) -> str:
    """A path from the config file: ``~`` expanded, relative ones taken from ``base``."""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def load_run_config(
    path: str | Path | None, overrides: list[str] | None = None, defaults: dict | None = None
) -> RunConfig:
    """Read a run TOML (or start from ``defaults``), apply ``--set`` overrides, validate."""
    tree: dict[str, Any] = {}
    base = None
    if defaults:
        tree = {key: dict(value) for key, value in defaults.items()}
    if path is not None:
        tree = load_toml(path)
        base = Path(path).resolve().parent
        resolve_input_paths(tree, base)
    apply_overrides(tree, overrides or [])
    return build_run_config(tree, Path(path) if path else None)


# Input paths of a run file, resolved against the file's folder.
INPUT_PATHS = (
    ("model", "init"),
    ("tokenizer", "path"),
    ("data", "corpus"),
    ("data", "validation"),
    ("data", "shards_dir"),
    ("data", "sources"),
)


def resolve_input_paths(tree: dict[str, Any], base: Path) -> None:
    """Resolve, in place, the input paths of a run tree (and its objective's path keys)
    against ``base``, the folder of the file they were written in."""
    paths = list(INPUT_PATHS)
    objective = tree.get("objective")
    if isinstance(objective, dict) and objective.get("name") in OBJECTIVES:
        paths += [("objective", key) for key in OBJECTIVES[objective["name"]].input_paths]
    for section, key in paths:
        table = tree.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table[key]
        if isinstance(value, str) and value != "default":
            table[key] = resolve_path(value, base)
        elif isinstance(value, list):
            table[key] = [
                resolve_path(v, base) if isinstance(v, str) and v != "default" else v for v in value
            ]


def build_run_config(tree: dict[str, Any], source: Path | None = None) -> RunConfig:
    for key in tree:
        if key not in SECTIONS:
            raise ConfigError(f"unknown section [{key}]; expected one of {', '.join(SECTIONS)}")
    objective = dict(tree.get("objective", {}))
    kind = objective_class(objective)
    init = _model_init(tree.get("model", {}))
    defaults = kind.run_defaults(objective)
    if init.init is not None and defaults.get("model"):
        raise ConfigError(
            f"model.init: objective {kind.name} sets up its own model (leave model.init out)"
        )
    tree = _with_defaults(tree, defaults)
    model_table = dict(tree.get("model", {}))
    model_table.pop("init", None), model_table.pop("resize_vocab", None)
    preset = model_table.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise ConfigError("model.preset must be a preset name")
    if init.init is not None:  # the checkpoint's architecture, checked against [model]
        model = init_model_config(init.init, model_table, preset)
    elif preset is not None:
        model = presets.get(preset, **model_table)
    else:
        model = ModelConfig.from_dict(model_table)
    tokenizer_table = dict(tree.get("tokenizer", {}))
    if init.init is not None and tokenizer_table.get("path") is None:
        tokenizer_table["path"] = init_tokenizer_path(init.init)
    tokenizer = from_dict(TokenizerSection, tokenizer_table, "tokenizer")
    data = from_dict(DataSection, dict(tree.get("data", {})), "data")
    train = from_dict(TrainSection, dict(tree.get("train", {})), "train")
    optim = from_dict(OptimConfig, dict(tree.get("optim", {})), "optim")
    schedule = from_dict(ScheduleConfig, dict(tree.get("schedule", {})), "schedule")
    if not kind.trains(model.form):
        what = f"model {preset or model.family} is"
        if init.init is not None:
            what = f"model.init {init.init} holds"
        raise ConfigError(
            f"objective {kind.name} trains {_article(kind.form)} model, but {what} "
            f"{_article(model.form)} model"
        )

    if isinstance(data.corpus, str):
        data.corpus = [data.corpus]
    if isinstance(data.validation, str):
        data.validation = [data.validation]
    _validate_data(data)
    _validate(train, data)
    model_raw = {**model.to_dict(), **({**vars(init)} if init.init is not None else {})}
    raw = {**tree, "model": model_raw, "tokenizer": vars(tokenizer), "data": vars(data)}
    raw["train"], raw["objective"] = vars(train), objective
    run = RunConfig(
        model, preset, tokenizer, data, objective, train, optim, schedule, source, raw, init
    )
    if data.subword_sampling is not None and not kind.resamplable:
        able = ", ".join(sorted(n for n, o in OBJECTIVES.items() if o.resamplable))
        raise ConfigError(
            f"data.subword_sampling: objective {kind.name} does not read packed token "
            f"windows; sampling works with {able}"
        )
    kind.check_run(run)
    return run


def _model_init(table: Any) -> ModelInit:
    """The continued-pretraining keys of a ``[model]`` table (``init``, ``resize_vocab``)."""
    if not isinstance(table, dict):
        raise ConfigError(f"[model] must be a table, got {type(table).__name__}")
    keys = {key: table[key] for key in ("init", "resize_vocab") if key in table}
    init = from_dict(ModelInit, keys, "model")
    if init.resize_vocab and init.init is None:
        raise ConfigError("model.resize_vocab fits a checkpoint to a tokenizer: set model.init")
    return init


def _article(word: str) -> str:
    """``word`` with "a" or "an" before it ("an encoder", "a decoder")."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _validate_data(data: DataSection) -> None:
    """The validation set: ``data.validation`` files or a ``data.val_fraction`` share."""
    if data.validation is not None:
        if data.sources is not None:
            raise ConfigError(
                "data.validation is for corpus runs; seq2seq holds out data.val_fraction "
                "of data.sources"
            )
        if not data.validation:
            raise ConfigError("data.validation must name at least one file")
        if data.val_fraction:
            log.warning(
                "data.val_fraction = %s is not used: data.validation is the validation set",
                data.val_fraction,
            )
        data.val_fraction = 0.0
    elif data.val_fraction is None:
        data.val_fraction = 0.05
    elif data.val_fraction == 0 and data.sources is None:
        raise ConfigError(
            "data.val_fraction = 0 leaves no validation set: name validation files "
            "(data.validation) or hold out a share of the corpus"
        )


def _with_defaults(tree: dict[str, Any], defaults: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``tree`` with an objective's :meth:`~triform.objectives.Objective.run_defaults` under
    the user's keys (``[model]`` defaults only when the user names no preset)."""
    tree = dict(tree)
    for section, values in defaults.items():
        table = tree.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table, got {type(table).__name__}")
        if section == "model" and "preset" in table:
            continue
        tree[section] = {**values, **table}
    return tree


def _validate(train: TrainSection, data: DataSection) -> None:
    if data.subword_sampling is not None:
        check_sampling_spec(data.subword_sampling, "data.subword_sampling")
    positive = {
        "train.steps": train.steps,
        "train.batch_size": train.batch_size,
        "train.grad_accum": train.grad_accum,
        "train.eval_every": train.eval_every,
        "train.log_every": train.log_every,
        "train.checkpoint_every": train.checkpoint_every,
        "train.keep_last": train.keep_last,
        "data.seq_len": data.seq_len,
        "data.target_len": data.target_len,
        "data.workers": data.workers,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if data.val_fraction is None or not 0.0 <= data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {data.val_fraction}")
    if train.eval_batches != "all" and train.eval_batches <= 0:
        raise ConfigError(f'train.eval_batches must be positive or "all", got {train.eval_batches}')
    train.check()
    check_report_to(train.trackers)
    if train.batch_size % train.grad_accum:
        raise ConfigError(
            f"train.batch_size {train.batch_size} (the global batch) does not split into "
            f"{train.grad_accum} accumulation steps (train.grad_accum)"
        )
