"""Running trained models: generation, feature extraction, perplexity, in-context learning
and attention maps."""

from triform.inference.attention import AttentionMaps, PositionMap, attention
from triform.inference.completions import Completion, complete
from triform.inference.features import extract_features, save_features
from triform.inference.generate import GenerateOutput, generate
from triform.inference.perplexity import Perplexity, perplexity
from triform.loading import load_model

__all__ = [
    "AttentionMaps",
    "Completion",
    "GenerateOutput",
    "Perplexity",
    "PositionMap",
    "attention",
    "complete",
    "extract_features",
    "generate",
    "load_model",
    "perplexity",
    "save_features",
]
