"""Fine-tuning: new heads on a pretrained body, every parameter updated (or only the head,
the upper blocks, or LoRA adapters: :mod:`triform.finetune.adapters`).

Task kinds: ``classification``, ``pair-classification``, ``regression``, ``tagging``,
``qa`` (extractive, with document striding), ``text-to-text`` (T5 / BART, task prefixes),
and GPT-1's ``gpt-classification``, ``gpt-entailment``, ``gpt-similarity`` and
``gpt-multiple-choice`` (input transformations with start / delim / extract tokens and the
auxiliary LM loss ``L = L_task + lm_weight * L_LM``).

    from triform.finetune import finetune, load_finetuned

    result = finetune("configs/finetune/example.toml", ["train.epochs=1"])
    print(result.summary())
    ft = load_finetuned(result.best_dir)
    ft.predict(["what a wonderful play"])

    ft.predict(["what a wonderful play"], scores=True)  # with probabilities
    finetune("configs/finetune/example.toml", resume=result.out_dir)  # continue a run

On the command line: ``triform finetune CONFIG.toml [--set section.key=value ...]
[--resume RUN]`` and ``triform predict RUN --input FILE [--out FILE]``.
"""

from triform.finetune.config import FinetuneConfig, load_finetune_config
from triform.finetune.saved import Finetuned, load_finetuned, save_finetuned
from triform.finetune.trainer import FinetuneResult, finetune

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "Finetuned",
    "finetune",
    "load_finetune_config",
    "load_finetuned",
    "save_finetuned",
]
