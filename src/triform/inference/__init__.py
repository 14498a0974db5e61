"""Running trained models: generation, feature extraction and in-context learning."""

from triform.inference.features import extract_features, save_features
from triform.inference.generate import GenerateOutput, generate
from triform.runs import load_model

__all__ = [
    "GenerateOutput",
    "extract_features",
    "generate",
    "load_model",
    "save_features",
]
