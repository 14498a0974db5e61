"""Fine-tuned model folders: writing them (atomically) and loading them back for prediction.

A folder (``best/``, ``final/``) holds ``model.safetensors`` (body and head, named ``body.*``
and ``head.*``), ``tokenizer.json`` (with any tokens the task added), ``finetune.json`` (the
task section, what the task learned, the body's ModelConfig, step and metrics),
``labels.json`` for tasks with classes, and ``model.json`` (the body's ModelConfig, as in a
pretraining run folder) so that ``generate``, ``features`` and
:func:`triform.loading.load_model` read the body of a fine-tuned folder. A LoRA run's folder
holds ``adapters.safetensors`` and ``adapters.json`` instead of ``model.safetensors``: loading
it loads the base model again and merges the adapters into it (:mod:`triform.loading`).

    ft = load_finetuned("runs/finetune/best")
    model, tokenizer, labels = ft                 # unpacks like a tuple
    ft.predict(["a great film", "a dull film"])   # -> ["positive", "negative"]
    ft.predict(["a great film"], scores=True)     # -> [{"prediction": "positive",
                                                  #      "score": 0.97, "probabilities": ...}]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.finetune.adapters import Adaptation, load_adapted_head
from triform.finetune.config import TaskSection
from triform.finetune.data import Row
from triform.finetune.tasks import FinetuneModel, Task, build_task
from triform.finetune.tasks.base import run_model
from triform.loading import is_adapter_folder, read_adapted_body
from triform.models import build_model
from triform.runs import load_weights, save_weights, unique_state_dict, write_weights
from triform.runtime.packed import packed_linears
from triform.tokenizers import load_tokenizer, save_tokenizer

FORMAT = 1
WEIGHTS = "model.safetensors"
META = "finetune.json"
LABELS = "labels.json"
MODEL_CONFIG = "model.json"


def save_finetuned(
    folder: str | Path,
    model: FinetuneModel,
    task: Task,
    *,
    step: int,
    metrics: dict[str, float] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    adaptation: Adaptation | None = None,
) -> Path:
    """Write ``model`` (body + head), its tokenizer and task description to ``folder``,
    replacing what was there only once the new folder is complete. ``weights``: the
    model's full state dict when it is sharded (FSDP gathers it on every rank).
    ``adaptation``: a LoRA run's :class:`~triform.finetune.adapters.Adaptation`, which writes
    the adapters and the head instead of the model."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if adaptation is not None and adaptation.saves_adapters:
        adaptation.write(tmp, model, weights if weights is not None else unique_state_dict(model))
    elif weights is not None:
        write_weights(weights, tmp / WEIGHTS)
    else:
        save_weights(model, tmp / WEIGHTS)
    save_tokenizer(task.tokenizer, tmp / "tokenizer.json")
    meta = {
        "format": FORMAT,
        "kind": task.kind,
        # the length the model was trained with (task.max_length cut to its positions)
        "task": {**dataclasses.asdict(task.cfg), "max_length": task.max_length},
        "task_state": task.state(),
        "model": model.body.config.to_dict(),
        "step": step,
        "metrics": {k: (v if v == v else None) for k, v in (metrics or {}).items()},
    }
    (tmp / META).write_text(json.dumps(meta, indent=2))
    (tmp / MODEL_CONFIG).write_text(json.dumps(model.body.config.to_dict(), indent=2))
    if task.labels is not None:
        (tmp / LABELS).write_text(json.dumps(task.labels, indent=2))
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


@dataclass
class Finetuned:
    """A fine-tuned model ready to predict. Unpacks as ``(model, tokenizer, labels)``."""

    model: FinetuneModel
    tokenizer: tokenizers.Tokenizer
    labels: list[str] | None
    task: Task
    step: int = 0
    metrics: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer, self.labels))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Finetuned:
        self.model.to(device)
        return self

    def predict(
        self,
        inputs: Sequence[Any],
        batch_size: int = 32,
        scores: bool = False,
        progress: bool = False,
    ) -> list[Any]:
        """Predictions for ``inputs``, shaped by the task:

        - classification / regression / gpt-classification: texts -> label names (numbers);
        - pair tasks (pair-classification, gpt-entailment, gpt-similarity): ``(a, b)`` pairs;
        - tagging: lists of words (or texts, split on whitespace) -> lists of tags;
        - qa: ``(question, context)`` -> answer text;
        - text-to-text: source texts (with their prefix) -> generated texts;
        - gpt-multiple-choice: ``(context, [choice, ...])`` -> the index of the best choice.

        A dict (column -> value, as in the data files) is accepted for any task. With
        ``scores=True`` each prediction is a dict: ``prediction`` as above plus the task's
        scores (``score`` and ``probabilities`` of classes and choices, per-word ``scores``
        of tags, ``score`` / ``start`` / ``end`` of answer spans). ``progress``: a bar on
        stderr.
        """
        rows = [Row(self.task.input_row(item), f"input {i}") for i, item in enumerate(inputs)]
        return self.predict_rows(rows, batch_size, scores, progress)

    def predict_rows(
        self, rows: list[Row], batch_size: int = 32, scores: bool = False, progress: bool = False
    ) -> list[Any]:
        """:meth:`predict` for rows of a data file (:func:`~triform.finetune.data.read_rows`)."""
        if not rows:
            return []
        with torch.no_grad(), packed_linears(self.model):
            outputs, features, _ = run_model(
                self.task, self.model, rows, batch_size, self.device, progress=progress
            )
        details = self.task.details(outputs, features, rows)
        return details if scores else [d["prediction"] for d in details]


def finetuned_folder(folder: str | Path) -> Path:
    """The model folder of a fine-tuned run: ``folder`` itself when it is one (``best/``,
    ``final/``), else its ``best/``, else its ``final/``."""
    folder = Path(folder)
    if (folder / META).is_file():
        return folder
    for name in ("best", "final"):
        if (folder / name / META).is_file():
            return folder / name
    raise TriformError(f"{folder} is not a fine-tuned model folder (no {META})")


def load_finetuned(folder: str | Path, device: torch.device | str = "cpu") -> Finetuned:
    """A fine-tuned model folder (``best/`` or ``final/`` of a run; or the run folder, which
    means its ``best/``, else ``final/``), in eval mode."""
    folder = finetuned_folder(folder)
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as err:
        raise TriformError(f"{folder / META}: malformed JSON: {err}") from None
    if meta.get("format") != FORMAT:
        raise TriformError(f"{folder / META}: unknown format {meta.get('format')!r}")
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    if is_adapter_folder(folder):  # LoRA: its base and the adapters, merged
        body = read_adapted_body(folder)
    else:
        body = build_model(ModelConfig.from_dict(meta["model"]))
    cfg = TaskSection(**meta["task"])
    task = build_task(cfg, tokenizer, body.config)
    task.load_state(meta.get("task_state") or {})
    task.prepare_body(body)
    model = FinetuneModel(body, task.build_head(body))
    if is_adapter_folder(folder):
        load_adapted_head(model, folder)
    else:
        load_weights(model, folder / WEIGHTS)
    model.to(device).eval()
    return Finetuned(model, tokenizer, task.labels, task, meta.get("step", 0), meta.get("metrics"))
