"""Fine-tuning tasks, one module per family of tasks; :func:`build_task` picks one by kind."""

from __future__ import annotations

import tokenizers

from triform.config import ModelConfig
from triform.finetune.config import TaskSection
from triform.finetune.tasks.base import FinetuneModel, Task, evaluate
from triform.finetune.tasks.classification import Classification, PairClassification, Regression
from triform.finetune.tasks.gpt import (
    GPTClassification,
    GPTEntailment,
    GPTMultipleChoice,
    GPTSimilarity,
)
from triform.finetune.tasks.qa import ExtractiveQA
from triform.finetune.tasks.tagging import Tagging
from triform.finetune.tasks.text2text import TextToText

TASKS: dict[str, type[Task]] = {
    task.kind: task
    for task in (
        Classification,
        PairClassification,
        Regression,
        Tagging,
        ExtractiveQA,
        TextToText,
        GPTClassification,
        GPTEntailment,
        GPTSimilarity,
        GPTMultipleChoice,
    )
}


def build_task(cfg: TaskSection, tokenizer: tokenizers.Tokenizer, body_config: ModelConfig) -> Task:
    """The task of kind ``cfg.kind``."""
    return TASKS[cfg.kind](cfg, tokenizer, body_config)


__all__ = ["TASKS", "FinetuneModel", "Task", "build_task", "evaluate"]
