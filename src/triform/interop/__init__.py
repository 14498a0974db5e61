"""Interoperability with other ecosystems: :mod:`triform.interop.hf` loads HuggingFace
checkpoints into triform models and exports them back, with the same outputs."""

from triform.interop import hf

__all__ = ["hf"]
