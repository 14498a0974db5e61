"""Fine-tuning tasks, one module per family of tasks; :func:`build_task` picks one by kind."""

from __future__ import annotations

import tokenizers

from triform.config import ModelConfig
from triform.finetune.config import TaskSection
from triform.finetune.tasks.base import FinetuneModel, Task, evaluate
from triform.finetune.tasks.classification import Classification, PairClassification, Regression
from triform.finetune.tasks.qa import ExtractiveQA
from triform.finetune.tasks.tagging import Tagging


def _registry() -> dict[str, type[Task]]:
    tasks: list[type[Task]] = [
        Classification,
        PairClassification,
        Regression,
        Tagging,
        ExtractiveQA,
    ]
    return {task.kind: task for task in tasks}


def build_task(cfg: TaskSection, tokenizer: tokenizers.Tokenizer, body_config: ModelConfig) -> Task:
    """The task of kind ``cfg.kind``."""
    return _registry()[cfg.kind](cfg, tokenizer, body_config)


__all__ = ["FinetuneModel", "Task", "build_task", "evaluate"]
