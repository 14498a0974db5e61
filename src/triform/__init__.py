"""triform: pretrain, fine-tune and run Transformer language models of all three forms
(encoder-only, encoder-decoder, decoder-only) from one small PyTorch core."""

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
