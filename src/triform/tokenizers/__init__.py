"""Tokenizers: train, load and save HuggingFace ``tokenizers`` pipelines for every family.

A triform tokenizer *is* a :class:`tokenizers.Tokenizer`, saved as a standard
``tokenizer.json`` that HuggingFace tools load as they are, and any HuggingFace
``tokenizer.json`` loads here. (Inside triform, ``import tokenizers`` is always the
HuggingFace package; this module is ``triform.tokenizers``.)

>>> from triform.data import Corpus
>>> tok = train_tokenizer(Corpus.from_paths("corpus/"), kind="wordpiece", vocab_size=8000,
...                       family="bert")
>>> save_tokenizer(tok, "tokenizer.json")
>>> SpecialTokens.from_tokenizer(load_tokenizer("tokenizer.json")).cls_id
2
"""

from triform.tokenizers.files import (
    load_tokenizer,
    save_tokenizer,
    tokenizer_file,
    tokenizer_from_str,
    tokenizer_hash,
)
from triform.tokenizers.sampling import SubwordSampler, encode_with_sampling, sampling_tokenizer
from triform.tokenizers.specials import (
    FAMILIES,
    FamilySpec,
    SpecialTokens,
    family_spec,
    family_special_tokens,
    fit_to_tokenizer,
)
from triform.tokenizers.training import DEFAULT_FAMILY, KINDS, train_tokenizer

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "KINDS",
    "FamilySpec",
    "SpecialTokens",
    "SubwordSampler",
    "encode_with_sampling",
    "family_spec",
    "family_special_tokens",
    "fit_to_tokenizer",
    "load_tokenizer",
    "sampling_tokenizer",
    "save_tokenizer",
    "tokenizer_file",
    "tokenizer_from_str",
    "tokenizer_hash",
    "train_tokenizer",
]
