"""Running trained models: generation (and, later, features and in-context learning)."""

from triform.inference.generate import generate
from triform.inference.loading import load_model, load_run

__all__ = ["generate", "load_model", "load_run"]
