"""Running trained models: generation, feature extraction, perplexity and in-context
learning."""

from triform.inference.completions import Completion, complete
from triform.inference.features import extract_features, save_features
from triform.inference.generate import GenerateOutput, generate
from triform.inference.loading import load_model, load_run
from triform.inference.perplexity import Perplexity, perplexity

__all__ = [
    "Completion",
    "GenerateOutput",
    "Perplexity",
    "complete",
    "extract_features",
    "generate",
    "load_model",
    "load_run",
    "perplexity",
    "save_features",
]
