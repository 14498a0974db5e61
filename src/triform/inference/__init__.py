"""Running trained models: generation, feature extraction, in-context learning and
attention maps."""

from triform.inference.attention import AttentionMaps, PositionMap, attention
from triform.inference.features import extract_features, save_features
from triform.inference.generate import GenerateOutput, generate
from triform.runs import load_model

__all__ = [
    "AttentionMaps",
    "PositionMap",
    "attention",
    "GenerateOutput",
    "extract_features",
    "generate",
    "load_model",
    "save_features",
]
