"""Models of the three forms, built from :mod:`triform.nn`."""

from __future__ import annotations

import contextlib

import torch

from triform.config import ModelConfig
from triform.models.base import TransformerModel
from triform.models.decoder import DecoderModel
from triform.models.encoder import EncoderModel
from triform.models.encoder_decoder import EncoderDecoderModel
from triform.models.outputs import DecoderOutput, EncoderOutput, Seq2SeqOutput

MODEL_CLASSES: dict[str, type[TransformerModel]] = {
    "encoder": EncoderModel,
    "decoder": DecoderModel,
    "encoder-decoder": EncoderDecoderModel,
}


def build_model(config: ModelConfig, device: torch.device | str | None = None) -> TransformerModel:
    """The model of ``config.form``, initialised. ``device="meta"`` allocates nothing."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return MODEL_CLASSES[config.form](config)


__all__ = [
    "DecoderModel",
    "DecoderOutput",
    "EncoderDecoderModel",
    "EncoderModel",
    "EncoderOutput",
    "MODEL_CLASSES",
    "Seq2SeqOutput",
    "TransformerModel",
    "build_model",
]
