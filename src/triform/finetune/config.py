"""One fine-tuning run = one TOML file: ``[model]``, ``[task]``, ``[train]``, as in
pretraining ``[optim]`` and ``[schedule]``, and for LoRA ``[lora]``.

```toml
[model]
source = "runs/bert-mlm-nsp"    # triform run folder | HF checkpoint folder | "preset:bert-tiny"
tokenizer = "tokenizer.json"    # needed for preset:..., optional otherwise

[task]
kind = "pair-classification"
train = "data/train.tsv"        # CSV, TSV or JSONL
validation = "data/dev.tsv"
text = "sentence1"              # column names
text_pair = "sentence2"
label = "label"
max_length = 128
metric = "accuracy"             # selects the best checkpoint

[train]
epochs = 3
batch_size = 32
out_dir = "runs/finetune-pairs"

[optim]
lr = 1e-4                       # the new head
body_lr = 2e-5                  # the pretrained body

[schedule]
kind = "linear"                 # warm-up (10 % of the steps by default), then linear decay
```

The keys ``train.lr``, ``train.body_lr``, ``train.weight_decay``, ``train.grad_clip``,
``train.schedule``, ``train.warmup_steps`` and ``train.warmup_ratio`` of earlier configs are
still read, each with a one-line warning naming its new key.

Input paths in the file (model source, tokenizer, data files) are resolved against the
file's folder; ``--set`` paths and ``train.out_dir`` against the working directory. Every
key is checked: a bad one is a one-line :class:`~triform.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from triform.config import LoopSection, apply_overrides, from_dict, load_toml
from triform.errors import ConfigError
from triform.finetune.custom_metric import is_custom, load_function
from triform.nn.lora import LoRAConfig
from triform.runtime.distributed import is_main_process, split_batch
from triform.tokenizers.sampling import check_sampling_spec
from triform.train.optim import OptimConfig
from triform.train.schedules import ScheduleConfig
from triform.train.trackers import check_report_to

log = logging.getLogger("triform.finetune")

TaskKind = Literal[
    "classification",
    "pair-classification",
    "regression",
    "tagging",
    "qa",
    "text-to-text",
    "gpt-classification",
    "gpt-entailment",
    "gpt-similarity",
    "gpt-multiple-choice",
]
TASK_KINDS: tuple[str, ...] = typing.get_args(TaskKind)

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc", "loss")
REGRESSION_METRICS = ("pearson", "spearman", "mse", "loss")
# The metrics each kind reports (the first is the default for choosing the best checkpoint).
METRICS: dict[str, tuple[str, ...]] = {
    "classification": CLASSIFICATION_METRICS,
    "pair-classification": CLASSIFICATION_METRICS,
    "regression": REGRESSION_METRICS,
    "tagging": ("f1", "precision", "recall", "accuracy", "loss"),
    "qa": ("f1", "exact_match", "loss"),
    "text-to-text": ("rougeL", "rouge1", "rouge2", "bleu", "exact_match", "loss"),
    "gpt-classification": CLASSIFICATION_METRICS,
    "gpt-entailment": CLASSIFICATION_METRICS,
    "gpt-similarity": CLASSIFICATION_METRICS,
    "gpt-multiple-choice": ("accuracy", "loss"),
}
LOWER_IS_BETTER = ("loss", "mse")
# The kinds that predict one of a set of classes (gpt-similarity: unless regression = true).
CLASS_KINDS = (
    "classification",
    "pair-classification",
    "gpt-classification",
    "gpt-entailment",
    "gpt-similarity",
)
SECTIONS = ("model", "task", "train", "optim", "schedule", "lora")
# Keys of [train] in earlier configs, and where they live now.
MOVED_KEYS = {
    "lr": ("optim", "lr"),
    "body_lr": ("optim", "body_lr"),
    "weight_decay": ("optim", "weight_decay"),
    "grad_clip": ("optim", "grad_clip"),
    "schedule": ("schedule", "kind"),
    "warmup_steps": ("schedule", "warmup_steps"),
    "warmup_ratio": ("schedule", "warmup_ratio"),
}


@dataclass
class ModelSection:
    """Where the pretrained body comes from.

    ``source``: a ``triform pretrain`` run folder (``model.json`` + checkpoints), a
    HuggingFace checkpoint folder (``config.json`` + weights) or ``preset:<name>`` (random
    initialisation; then ``tokenizer`` is required). ``overrides``: ModelConfig fields for a
    preset (e.g. ``{num_layers = 2}``).
    """

    source: str = ""
    """The body: a ``triform pretrain`` run folder, a HuggingFace checkpoint folder or
    ``preset:<name>`` (random initialisation). Required."""
    tokenizer: str | None = None
    """A ``tokenizer.json``: required with ``preset:...``, else the source's own."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields changed on a ``preset:...`` body, e.g. ``{num_layers = 2}``."""


@dataclass
class TaskSection:
    """What to learn, from which files. Column keys (``text``, ``label``, ...) name the
    columns of the data files; ``labels`` fixes the label set (else: sorted from train)."""

    kind: TaskKind = "classification"
    """What is learned: the task kind (see the fine-tuning guide's table)."""
    train: str = ""
    """The training file: CSV, TSV or JSONL. Required."""
    validation: str | None = None
    """The validation file: evaluated during training, picks ``best/``."""
    test: str | None = None
    """A test file, predicted (and scored when labelled) with the best model."""
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    """The data files' format; ``auto``: from each file's suffix."""
    # column names
    text: str = "text"
    """Column of the text (of the first text of a pair)."""
    text_pair: str = "text_pair"
    """Column of the second text of a pair."""
    label: str = "label"
    """Column of the label (a class name, a number, or a choice's index)."""
    tokens: str = "tokens"
    """tagging: column of the words (a JSON list, or space-separated in CSV / TSV)."""
    tags: str = "tags"
    """tagging: column of the tags, one per word."""
    question: str = "question"
    """qa: column of the question."""
    context: str = "context"
    """qa: column of the context the answer is in."""
    answer_start: str = "answer_start"
    """qa: column of the answer's first character in the context."""
    answer_text: str = "answer_text"
    """qa: column of the answer's text."""
    source: str = "source"
    """text-to-text: column of the source text."""
    target: str = "target"
    """text-to-text: column of the target text."""
    prefix: str = "prefix"
    """text-to-text: column of a per-row task prefix, if the file has it."""
    choices: str = "choices"
    """gpt-multiple-choice: column of the options (a list)."""
    # the task
    labels: list[str] | None = None
    """The label set, in order; unset: the sorted labels of the training file."""
    task_prefix: str = ""
    """text-to-text: put before every source that has no prefix of its own."""
    max_length: int = 128
    """Tokens per input, special tokens included (at least 8)."""
    max_target_length: int | None = None
    """text-to-text: tokens kept of a target; unset: all of them."""
    generate_max_tokens: int = 64
    """text-to-text: the decoding budget at evaluation and prediction."""
    stride: int | None = None
    """qa: context tokens shared by consecutive windows; unset: ``max_length // 4``."""
    max_answer_length: int = 30
    """qa: the longest answer span considered, in tokens."""
    pooling: Literal["auto", "first", "last", "mean"] = "auto"
    """Which token state a sequence head reads; ``auto``: the body's usual one."""
    head_dropout: float | None = None
    """Dropout before the head; unset: the body's dropout."""
    lm_weight: float = 0.5
    """GPT kinds: weight of the auxiliary language-modelling loss (0: off)."""
    regression: bool = False
    """gpt-similarity: predict a score instead of a class."""
    metric: str | None = None
    """The metric that picks ``best/`` and early stopping: one of the kind's, or a function
    of yours, ``"path/to/file.py:function"`` (relative to the config file) or
    ``"module:function"``, of ``(predictions, references)`` returning a number or a dict of
    numbers; unset: the kind's main one."""
    metric_mode: Literal["auto", "max", "min"] = "auto"
    """Whether a larger (``max``) or smaller (``min``) ``metric`` is better; ``auto``: a
    built-in metric's own direction (loss and MSE: smaller), ``max`` for a function."""
    metric_key: str | None = None
    """With a function that returns a dict: the key that picks ``best/``; unset: the first."""
    class_weights: str | list[float] | None = None
    """Classification kinds: ``"balanced"`` (n / (classes · count)) or one loss weight per
    label."""
    subword_sampling: dict[str, Any] | None = None
    """Re-tokenize the training texts every epoch: ``{alpha = 0.1, nbest_size = -1}``
    (Unigram sampling) or ``{dropout = 0.1}`` (BPE-dropout); not for qa."""

    @property
    def qa_stride(self) -> int:
        """The QA window overlap: ``stride``, by default a quarter of ``max_length``."""
        return self.stride if self.stride is not None else self.max_length // 4


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """The ``[optim]`` section of a fine-tuning run: pretraining's, with ``lr`` the new
    head's learning rate and ``body_lr`` the pretrained body's (default: ``lr``)."""

    lr: float = 5e-5
    """Peak learning rate of the new head."""
    body_lr: float | None = None
    """Peak learning rate of the pretrained body; unset: ``lr``."""

    def validate(self) -> None:
        super().validate()
        body_lr = self.body_lr
        if isinstance(body_lr, (int, float)) and not isinstance(body_lr, bool) and body_lr <= 0:
            raise ConfigError(
                f"optim.body_lr must be positive, got {body_lr} (to keep the body as it is: "
                'train.freeze = "body")'
            )


@dataclass
class FinetuneScheduleConfig(ScheduleConfig):
    """The ``[schedule]`` section of a fine-tuning run: pretraining's, with fine-tuning's
    defaults (linear decay to zero after a warm-up of 10 % of the steps)."""

    kind: Literal["linear", "cosine", "inverse-sqrt", "constant"] = "linear"
    """The decay after warm-up (``constant``: none; ``inverse-sqrt``: the Transformer's)."""
    min_lr_ratio: float = 0.0
    """Floor of linear and cosine decay, as a fraction of the peak learning rate."""

    default_warmup_ratio: ClassVar[float | None] = 0.1


@dataclass
class TrainSection(LoopSection):
    """The loop. ``steps`` (when set) overrides ``epochs``. ``eval_every``: 0 evaluates
    after every epoch, N every N steps (and at the end). A step is ``batch_size`` examples
    in ``grad_accum`` micro-batches (as in pretraining). ``checkpoint_every`` /
    ``keep_last``: the resumable checkpoints; ``early_stopping_*``: stop after that many
    evaluations without an improvement of the metric by at least ``min_delta``;
    ``sampler = "balanced"`` draws every class equally often (classification kinds). The keys
    every loop shares are :class:`~triform.config.LoopSection`'s; the learning rates and
    schedule are in ``[optim]`` and ``[schedule]``."""

    out_dir: str = "runs/finetune"
    epochs: int = 3
    """Passes over the training file (``steps``, when set, decides instead)."""
    eval_batch_size: int | None = None
    """Examples per forward at evaluation; unset: ``batch_size``."""
    eval_every: int = 0
    """0: evaluate after every epoch; N: every N steps (and at the end)."""
    checkpoint_every: int = 0
    """0: a resumable checkpoint after every epoch; N: every N steps."""
    keep_last: int = 1
    """Resumable checkpoints kept, the newest ones (0: all)."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement; unset: never."""
    early_stopping_min_delta: float = 0.0
    """The least change of the metric that counts as an improvement."""
    sampler: Literal["random", "balanced"] = "random"
    """``balanced``: every class drawn equally often, with replacement (classification)."""
    save_final: bool = True
    """Save the last model in ``final/`` (saved anyway when nothing fills ``best/``)."""
    freeze: Literal["none", "body"] = "none"
    """``body``: only the new head trains; the pretrained body keeps its weights."""
    freeze_layers: int = 0
    """Keep the embeddings and the lowest N blocks of every stack as they are (0: none)."""


@dataclass
class FinetuneConfig:
    """A whole fine-tuning run, validated."""

    model: ModelSection
    task: TaskSection
    train: TrainSection
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)
    lora: LoRAConfig | None = None
    source: Path | None = None

    @property
    def metric(self) -> str:
        """The metric that picks the best checkpoint."""
        return self.task.metric or default_metric(self.task)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": dataclasses.asdict(self.model),
            "task": dataclasses.asdict(self.task),
            "train": dataclasses.asdict(self.train),
            "optim": dataclasses.asdict(self.optim),
            "schedule": dataclasses.asdict(self.schedule),
            **({"lora": dataclasses.asdict(self.lora)} if self.lora is not None else {}),
        }


def task_metrics(task: TaskSection) -> tuple[str, ...]:
    """The metrics a task reports."""
    if task.kind == "gpt-similarity" and task.regression:
        return REGRESSION_METRICS
    return METRICS[task.kind]


def default_metric(task: TaskSection) -> str:
    return task_metrics(task)[0]


def higher_is_better(metric: str, mode: str = "auto") -> bool:
    """Whether a larger ``metric`` is better: ``mode`` (``task.metric_mode``) when ``max`` or
    ``min``, else the metric's own direction (a function of yours: larger)."""
    if mode != "auto":
        return mode == "max"
    return metric not in LOWER_IS_BETTER


# Input paths, resolved against the config file's folder.
INPUT_PATHS = (("model", "source"), ("model", "tokenizer"), ("task", "train"),
               ("task", "validation"), ("task", "test"))  # fmt: skip


def load_finetune_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    tree: dict[str, Any] | None = None,
) -> FinetuneConfig:
    """Read a fine-tuning TOML (or take ``tree``, a dict of sections), apply ``--set``
    overrides (``section.key=value``), validate."""
    data: dict[str, Any] = {}
    if tree is not None:
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    if path is not None:
        data = load_toml(path)
        base = Path(path).resolve().parent
        for section, key in INPUT_PATHS:
            table = data.get(section)
            if isinstance(table, dict) and isinstance(table.get(key), str):
                value = table[key]
                if value and not value.startswith("preset:"):
                    resolved = Path(value).expanduser()
                    table[key] = str(resolved if resolved.is_absolute() else base / resolved)
        _resolve_metric_file(data.get("task"), base)
    apply_overrides(data, overrides or [])
    return build_finetune_config(data, Path(path) if path is not None else None)


def _resolve_metric_file(task: Any, base: Path) -> None:
    """``task.metric = "file.py:function"``: the file, relative to the config's folder."""
    metric = task.get("metric") if isinstance(task, dict) else None
    if isinstance(metric, str) and is_custom(metric):
        where, _, name = metric.rpartition(":")
        path = Path(where).expanduser()
        if where.endswith(".py") and not path.is_absolute():
            task["metric"] = f"{base / path}:{name}"


def build_finetune_config(tree: dict[str, Any], source: Path | None = None) -> FinetuneConfig:
    """Validate a dict of sections into a :class:`FinetuneConfig`."""
    for key in tree:
        if key not in SECTIONS:
            raise ConfigError(f"unknown section [{key}]; expected one of {', '.join(SECTIONS)}")
    tree = _moved_keys(tree)
    model = from_dict(ModelSection, dict(tree.get("model", {})), "model")
    task = from_dict(TaskSection, dict(tree.get("task", {})), "task")
    train = from_dict(TrainSection, dict(tree.get("train", {})), "train")
    optim = from_dict(FinetuneOptimConfig, dict(tree.get("optim", {})), "optim")
    schedule = from_dict(FinetuneScheduleConfig, dict(tree.get("schedule", {})), "schedule")
    lora = from_dict(LoRAConfig, tree["lora"], "lora") if "lora" in tree else None
    _validate(model, task, train)
    _validate_freezing(train, lora)
    return FinetuneConfig(model, task, train, optim, schedule, lora, source)


def _moved_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` with the ``[train]`` keys of earlier configs moved to their sections
    (:data:`MOVED_KEYS`), a one-line warning for each; a key given in both places is an
    error."""
    train = tree.get("train")
    if not isinstance(train, dict) or not any(key in train for key in MOVED_KEYS):
        return tree
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for old, (section, key) in MOVED_KEYS.items():
        if old not in tree["train"]:
            continue
        table = tree.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table, got {type(table).__name__}")
        if key in table:
            raise ConfigError(
                f"train.{old} and {section}.{key} are the same key: keep {section}.{key}"
            )
        table[key] = tree["train"].pop(old)
        if is_main_process():  # every process reads the config; one says so
            log.warning("train.%s is now %s.%s (read as such)", old, section, key)
    return tree


def _validate(model: ModelSection, task: TaskSection, train: TrainSection) -> None:
    if not model.source:
        raise ConfigError(
            "model.source is required: a triform run folder, an HF checkpoint folder "
            "or preset:<name>"
        )
    if model.source.startswith("preset:") and not model.tokenizer:
        raise ConfigError("model.tokenizer is required with model.source = preset:...")
    if model.overrides and not model.source.startswith("preset:"):
        raise ConfigError("model.overrides applies to preset:... sources only")
    if not task.train:
        raise ConfigError("task.train is required (a CSV, TSV or JSONL file)")
    positive = {
        "task.max_length": task.max_length,
        "task.generate_max_tokens": task.generate_max_tokens,
        "task.max_answer_length": task.max_answer_length,
        "train.epochs": train.epochs,
        "train.batch_size": train.batch_size,
        "train.log_every": train.log_every,
        "train.grad_accum": train.grad_accum,
    }
    optional_positive = {
        "task.max_target_length": task.max_target_length,
        "train.steps": train.steps,
        "train.eval_batch_size": train.eval_batch_size,
        "train.threads": train.threads,
        "train.early_stopping_patience": train.early_stopping_patience,
    }
    for key, value in {**positive, **optional_positive}.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    split_batch(train.batch_size, train.grad_accum, world=1)  # micro-batches of equal size
    if task.max_length < 8:
        raise ConfigError(f"task.max_length must be at least 8, got {task.max_length}")
    if task.kind == "qa" and not 0 <= task.qa_stride < task.max_length // 2:
        raise ConfigError(
            f"task.stride must be in [0, max_length / 2) = [0, {task.max_length // 2}), "
            f"got {task.stride}"
        )
    _validate_classes(task, train)
    _validate_sampling(task)
    if task.lm_weight < 0:
        raise ConfigError(f"task.lm_weight must be >= 0, got {task.lm_weight}")
    if task.head_dropout is not None and not 0 <= task.head_dropout < 1:
        raise ConfigError(f"task.head_dropout must be in [0, 1), got {task.head_dropout}")
    if task.labels is not None and len(set(task.labels)) != len(task.labels):
        raise ConfigError("task.labels has duplicates")
    if task.labels is not None and len(task.labels) < 2:
        raise ConfigError("task.labels needs at least two labels")
    if task.regression and task.kind != "gpt-similarity":
        raise ConfigError("task.regression applies to gpt-similarity (use kind = 'regression')")
    allowed = task_metrics(task)
    if is_custom(task.metric):
        load_function(task.metric)  # type: ignore[arg-type]  # importable and callable
    elif task.metric is not None and task.metric not in allowed:
        raise ConfigError(
            f"task.metric for {task.kind} must be one of {', '.join(allowed)} or "
            f"'module:function' of yours, got {task.metric!r}"
        )
    if task.metric_key is not None and not is_custom(task.metric):
        raise ConfigError("task.metric_key picks a value of a function of yours (task.metric)")
    train.check()
    check_report_to(train.trackers)
    if train.eval_every < 0:
        raise ConfigError(f"train.eval_every must be >= 0, got {train.eval_every}")
    for key in ("checkpoint_every", "keep_last"):
        if getattr(train, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {getattr(train, key)}")
    if train.early_stopping_min_delta < 0:
        raise ConfigError(
            f"train.early_stopping_min_delta must be >= 0, got {train.early_stopping_min_delta}"
        )
    if train.early_stopping_patience is not None and not task.validation:
        raise ConfigError("train.early_stopping_patience needs task.validation to evaluate on")


def has_classes(task: TaskSection) -> bool:
    """Whether the task predicts one of a set of named classes per example."""
    if task.kind == "gpt-similarity":
        return not task.regression
    return task.kind in CLASS_KINDS


def _validate_classes(task: TaskSection, train: TrainSection) -> None:
    weights = task.class_weights
    if weights is not None and not has_classes(task):
        raise ConfigError(f"task.class_weights applies to classification kinds, not {task.kind}")
    if isinstance(weights, str) and weights != "balanced":
        raise ConfigError(f"task.class_weights must be 'balanced' or a list, got {weights!r}")
    if isinstance(weights, list):
        if any(not isinstance(w, (int, float)) or w < 0 for w in weights) or not any(weights):
            raise ConfigError("task.class_weights must be non-negative numbers, not all zero")
        if task.labels is not None and len(weights) != len(task.labels):
            raise ConfigError(
                f"task.class_weights has {len(weights)} weights for {len(task.labels)} labels"
            )
    if train.sampler == "balanced" and not has_classes(task):
        raise ConfigError(
            f"train.sampler = 'balanced' applies to classification kinds, not {task.kind}"
        )


def _validate_sampling(task: TaskSection) -> None:
    sampling = task.subword_sampling
    if sampling is None:
        return
    check_sampling_spec(sampling, "task.subword_sampling")
    if task.kind == "qa":
        raise ConfigError(
            "task.subword_sampling is not available for qa: answer spans are found through "
            "the tokenizer's character offsets"
        )


def _validate_freezing(train: TrainSection, lora: LoRAConfig | None) -> None:
    """What trains: one of ``train.freeze``, ``train.freeze_layers`` and ``[lora]``."""
    if train.freeze_layers < 0:
        raise ConfigError(f"train.freeze_layers must be >= 0, got {train.freeze_layers}")
    if train.freeze_layers and train.freeze != "none":
        raise ConfigError('train.freeze_layers applies with train.freeze = "none"')
    if lora is not None and (train.freeze != "none" or train.freeze_layers):
        raise ConfigError(
            "[lora] freezes the whole body already: leave train.freeze and "
            "train.freeze_layers unset"
        )
