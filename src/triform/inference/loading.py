"""Loading a model and its tokenizer for inference from any folder triform knows:
a ``triform pretrain`` run folder, a ``triform convert`` folder, or a HuggingFace
checkpoint folder."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.models import TransformerModel, build_model
from triform.tokenizers import load_tokenizer
from triform.train.checkpoint import latest_checkpoint, load_checkpoint, load_weights


def _model_config(folder: Path) -> ModelConfig:
    config_file = folder / "model.json"
    try:
        return ModelConfig.from_dict(json.loads(config_file.read_text()))
    except json.JSONDecodeError as err:
        raise TriformError(f"{config_file}: malformed JSON: {err}") from None


def _tokenizer(folder: Path) -> tokenizers.Tokenizer:
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TriformError(f"{folder} has no tokenizer.json")
    return load_tokenizer(tokenizer_file)


def load_run(run_dir: str | Path) -> tuple[TransformerModel, tokenizers.Tokenizer]:
    """The model (latest checkpoint's weights, eval mode) and tokenizer of a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").is_file():
        raise TriformError(f"{run_dir} is not a triform run folder (no model.json)")
    config = _model_config(run_dir)
    if latest_checkpoint(run_dir) is None:
        raise TriformError(f"{run_dir} has no checkpoint yet")
    model = build_model(config)
    load_checkpoint(run_dir, model, restore_rng=False)
    return model.eval(), _tokenizer(run_dir)


def load_model(folder: str | Path) -> tuple[TransformerModel, tokenizers.Tokenizer]:
    """Model (eval mode) and tokenizer from a run folder, a ``triform convert`` folder
    (``model.json`` + ``model.safetensors``) or a HuggingFace folder (``config.json``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TriformError(f"model folder not found: {folder}")
    if (folder / "model.json").is_file():
        if (folder / "checkpoints").is_dir():
            return load_run(folder)
        model = build_model(_model_config(folder))
        load_weights(model, folder / "model.safetensors")
        return model.eval(), _tokenizer(folder)
    if (folder / "config.json").is_file():
        from triform.interop import hf

        return hf.load(folder), _tokenizer(folder)
    raise TriformError(
        f"{folder} is neither a triform run folder (model.json) nor a HuggingFace "
        "checkpoint folder (config.json)"
    )


def load_model_config(folder: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of what :func:`load_model` would load from ``folder``, read
    without the weights (for a HuggingFace folder: its ``config.json`` for the class it
    names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TriformError(f"model folder not found: {folder}")
    if (folder / "model.json").is_file():
        return _model_config(folder)
    if (folder / "config.json").is_file():
        from triform.interop import hf

        hf_config = hf.read_config(folder)
        architectures = hf_config.get("architectures") or []
        if architectures:
            return hf.config_from_hf(hf_config, architectures[0])
        return hf.load(folder).config  # the class follows from the weights
    return load_model(folder)[0].config  # raises the one-line error for other folders
