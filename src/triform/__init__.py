"""triform: pretrain, fine-tune and run Transformer language models of all three forms
(encoder-only, encoder-decoder, decoder-only) from one small PyTorch core.

The names below are imported on first use, so that ``import triform`` (and the ``triform``
command's start) costs nothing until torch is needed: an interrupt or an error while the
command starts is then a one-line message, never a traceback from inside an import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triform import presets
    from triform.config import ModelConfig
    from triform.errors import ConfigError, TriformError
    from triform.inference.generate import generate
    from triform.models import (
        DecoderModel,
        EncoderDecoderModel,
        EncoderModel,
        TransformerModel,
        build_model,
    )

__version__ = "0.1.0"

# name -> the module that defines it
_HOMES = {
    "presets": "triform.presets",
    "ModelConfig": "triform.config",
    "ConfigError": "triform.errors",
    "TriformError": "triform.errors",
    "generate": "triform.inference.generate",
    "DecoderModel": "triform.models",
    "EncoderDecoderModel": "triform.models",
    "EncoderModel": "triform.models",
    "TransformerModel": "triform.models",
    "build_model": "triform.models",
}

__all__ = [
    "ConfigError",
    "DecoderModel",
    "EncoderDecoderModel",
    "EncoderModel",
    "ModelConfig",
    "TransformerModel",
    "TriformError",
    "build_model",
    "generate",
    "presets",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'triform' has no attribute {name!r}")
    module = importlib.import_module(home)
    value = module if home == f"triform.{name}" else getattr(module, name)
    globals()[name] = value
    return value
