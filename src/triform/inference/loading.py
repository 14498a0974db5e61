"""Loading a triform run folder (config, tokenizer, latest weights) for inference."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.models import TransformerModel, build_model
from triform.tokenizers import load_tokenizer
from triform.train.checkpoint import latest_checkpoint, load_checkpoint


def load_run(run_dir: str | Path) -> tuple[TransformerModel, tokenizers.Tokenizer]:
    """The model (latest checkpoint's weights, eval mode) and tokenizer of a run folder."""
    run_dir = Path(run_dir)
    config_file = run_dir / "model.json"
    if not config_file.is_file():
        raise TriformError(f"{run_dir} is not a triform run folder (no model.json)")
    try:
        config = ModelConfig.from_dict(json.loads(config_file.read_text()))
    except json.JSONDecodeError as err:
        raise TriformError(f"{config_file}: malformed JSON: {err}") from None
    if latest_checkpoint(run_dir) is None:
        raise TriformError(f"{run_dir} has no checkpoint yet")
    model = build_model(config)
    load_checkpoint(run_dir, model, restore_rng=False)
    tokenizer_file = run_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TriformError(f"{run_dir} has no tokenizer.json")
    return model.eval(), load_tokenizer(tokenizer_file)
