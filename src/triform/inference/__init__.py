"""Running trained models: generation, feature extraction and in-context learning."""

from triform.inference.features import extract_features, save_features
from triform.inference.generate import GenerateOutput, generate
from triform.inference.loading import load_model, load_model_config, load_run

__all__ = [
    "GenerateOutput",
    "extract_features",
    "generate",
    "load_model",
    "load_model_config",
    "load_run",
    "save_features",
]
