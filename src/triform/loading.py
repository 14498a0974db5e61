"""The one loader every command uses: a model (and its tokenizer) from whatever a folder is —
a triform run folder (its latest checkpoint), model folder or fine-tuned model folder
(:mod:`triform.runs`), or a HuggingFace checkpoint folder (:mod:`triform.interop.hf`).

It sits above both, so neither knows the other: ``generate``, ``features``, ``evaluate``,
``attention``, ``convert``, fine-tuning bodies and distillation teachers all read a folder
through it.
"""

from __future__ import annotations

from pathlib import Path

import tokenizers
from torch import nn

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.interop import hf
from triform.runs import (
    HF_CONFIG,
    MODEL_JSON,
    check_finite,
    read_run_model,
    read_run_model_config,
    read_tokenizer,
)
from triform.tokenizers import load_tokenizer


def _is_dir(folder: Path) -> Path:
    if not folder.is_dir():
        raise TriformError(f"model folder not found: {folder}")
    return folder


def read_model_config_of(folder: str | Path, part: str | None = None) -> ModelConfig:
    """The config of the model :func:`read_model` would load from ``folder``, read without
    the weights (a HuggingFace folder: its ``config.json`` for the class it names)."""
    folder = _is_dir(Path(folder))
    if (folder / MODEL_JSON).is_file():
        return read_run_model_config(folder, part)
    if (folder / HF_CONFIG).is_file():
        hf_config = hf.read_config(folder)
        architectures = hf_config.get("architectures") or []
        if architectures:
            return hf.config_from_hf(hf_config, architectures[0])
    return read_model(folder, part).config  # the class follows from the weights, or an error


def read_model(folder: str | Path, part: str | None = None) -> nn.Module:
    """The model (eval mode, on the CPU) of a run folder (its latest checkpoint), a model
    folder or a HuggingFace checkpoint folder. ``part`` picks one model of a run that
    trained several (ELECTRA: ``"discriminator"``, the default, or ``"generator"``)."""
    folder = _is_dir(Path(folder))
    if (folder / MODEL_JSON).is_file():
        return read_run_model(folder, part)
    if (folder / HF_CONFIG).is_file():
        if part is not None:
            raise TriformError(f"{folder} is a HuggingFace checkpoint; it has no parts")
        return check_finite(hf.load(folder), folder)
    raise TriformError(
        f"{folder} is neither a triform run or model folder ({MODEL_JSON}) nor a "
        f"HuggingFace checkpoint folder ({HF_CONFIG})"
    )


def load_model(
    folder: str | Path, part: str | None = None, tokenizer: str | Path | None = None
) -> tuple[nn.Module, tokenizers.Tokenizer]:
    """:func:`read_model` and the folder's tokenizer (or the ``tokenizer.json`` at
    ``tokenizer``, used instead). A tokenizer with more tokens than the model's vocabulary
    is refused."""
    model = read_model(folder, part)
    tok = read_tokenizer(folder) if tokenizer is None else load_tokenizer(tokenizer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > model.config.vocab_size:
        raise TriformError(
            f"the tokenizer has {size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tok
