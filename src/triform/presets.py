"""Named :class:`ModelConfig` presets reproducing the published architectures.

Each family is a handful of settings on the one core; sizes follow the papers' tables and the
reference configurations released with the weights. ``get(name, **overrides)`` returns a
fresh, validated copy; ``*-tiny`` presets are small enough for unit tests.
"""

from __future__ import annotations

from typing import Any

from triform.config import ModelConfig
from triform.errors import ConfigError

# -- family settings: everything but the sizes --------------------------------------------
_BERT = dict(
    family="bert",
    form="encoder",
    vocab_size=30522,
    max_positions=512,
    type_vocab_size=2,
    position="learned",
    norm_placement="post",
    embedding_norm=True,
    final_norm=False,
    activation="gelu",
    norm_eps=1e-12,
    lm_head_bias=True,
    lm_head_transform=True,
    encoder_head="mlm",
    pair_head="nsp",
    pooler=True,
    pad_token_id=0,
)
_ROBERTA = {
    **_BERT,
    "family": "roberta",
    "vocab_size": 50265,
    "type_vocab_size": 1,
    "position_offset": 2,
    "positions_from_padding": True,
    "norm_eps": 1e-5,
    "pair_head": "none",
    "pooler": False,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
_ALBERT = {
    **_BERT,
    "family": "albert",
    "vocab_size": 30000,
    "embedding_size": 128,
    "share_layers": True,
    "activation": "gelu_tanh",
    "pair_head": "sop",
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "eos_token_id": 3,
}
_ELECTRA = {
    **_BERT,
    "family": "electra",
    "encoder_head": "rtd",
    "pair_head": "none",
    "pooler": False,
}
_GPT = dict(
    family="gpt",
    form="decoder",
    vocab_size=40478,
    max_positions=512,
    position="learned",
    norm_placement="post",
    embedding_norm=False,
    final_norm=False,
    activation="gelu_tanh",  # the GPT code uses GELU's tanh approximation (HF: afn="gelu")
    tie_embeddings=True,
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    ffn_size=3072,
)
_GPT2 = {
    **_GPT,
    "family": "gpt2",
    "vocab_size": 50257,
    "max_positions": 1024,
    "norm_placement": "pre",
    "final_norm": True,
    "activation": "gelu_tanh",
    "scaled_residual_init": True,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
}
# GPT-3: GPT-2 with a 2048 context and dense / locally banded layers alternating.
_GPT3 = {
    **_GPT2,
    "family": "gpt3",
    "max_positions": 2048,
    "attention_pattern": ["dense", "local"],
    "local_window": 256,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}
_T5 = dict(
    family="t5",
    form="encoder-decoder",
    vocab_size=32128,
    position="relative",
    relative_buckets=32,
    relative_max_distance=128,
    norm="rmsnorm",
    norm_eps=1e-6,
    norm_placement="pre",
    final_norm=True,
    activation="relu",
    bias=False,
    head_dim=64,
    attention_scale=1.0,
    scale_tied_logits=True,
    max_positions=512,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
_BART = dict(
    family="bart",
    form="encoder-decoder",
    vocab_size=50265,
    max_positions=1024,
    position="learned",
    position_offset=2,
    norm_placement="post",
    embedding_norm=True,
    final_norm=False,
    activation="gelu",
    lm_head_bias=True,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    attention_dropout=0.0,
)
_TRANSFORMER = dict(
    family="transformer",
    form="encoder-decoder",
    vocab_size=37000,
    max_positions=1024,
    position="sinusoidal",
    norm_placement="post",
    final_norm=False,
    activation="relu",
    scale_embeddings=True,
    norm_eps=1e-6,
    pad_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    init_std=0.02,
)


def _size(h: int, layers: int, heads: int, ffn: int | None = None, **extra: Any) -> dict:
    return dict(hidden_size=h, num_layers=layers, num_heads=heads, ffn_size=ffn or 4 * h, **extra)


PRESETS: dict[str, dict[str, Any]] = {
    "transformer-base": {**_TRANSFORMER, **_size(512, 6, 8, 2048)},
    "transformer-big": {**_TRANSFORMER, **_size(1024, 6, 16, 4096, dropout=0.3)},
    "bert-base": {**_BERT, **_size(768, 12, 12)},
    "bert-large": {**_BERT, **_size(1024, 24, 16)},
    "roberta-base": {**_ROBERTA, **_size(768, 12, 12)},
    "roberta-large": {**_ROBERTA, **_size(1024, 24, 16)},
    "albert-base": {**_ALBERT, **_size(768, 12, 12)},
    "albert-large": {**_ALBERT, **_size(1024, 24, 16)},
    "albert-xlarge": {**_ALBERT, **_size(2048, 24, 16)},
    "albert-xxlarge": {**_ALBERT, **_size(4096, 12, 64)},
    "electra-small": {**_ELECTRA, **_size(256, 12, 4, embedding_size=128)},
    "electra-base": {**_ELECTRA, **_size(768, 12, 12)},
    "electra-large": {**_ELECTRA, **_size(1024, 24, 16)},
    "gpt": dict(_GPT),
    "gpt2": {**_GPT2, **_size(768, 12, 12)},
    "gpt2-medium": {**_GPT2, **_size(1024, 24, 16)},
    "gpt2-large": {**_GPT2, **_size(1280, 36, 20)},
    "gpt2-xl": {**_GPT2, **_size(1600, 48, 25)},
    "gpt3-small": {**_GPT3, **_size(768, 12, 12)},
    "gpt3-medium": {**_GPT3, **_size(1024, 24, 16)},
    "t5-small": {**_T5, **_size(512, 6, 8, 2048)},
    "t5-base": {**_T5, **_size(768, 12, 12, 3072)},
    "t5-large": {**_T5, **_size(1024, 24, 16, 4096)},
    "bart-base": {**_BART, **_size(768, 6, 12, 3072)},
    "bart-large": {**_BART, **_size(1024, 12, 16, 4096)},
}

# Tiny variants: the same family settings at unit-test size.
_TINY = dict(
    hidden_size=64, num_layers=2, num_heads=4, ffn_size=128, max_positions=128, vocab_size=1000
)
for _name, _base in [
    ("transformer-tiny", "transformer-base"),
    ("bert-tiny", "bert-base"),
    ("roberta-tiny", "roberta-base"),
    ("albert-tiny", "albert-base"),
    ("electra-tiny", "electra-small"),
    ("gpt-tiny", "gpt"),
    ("gpt2-tiny", "gpt2"),
    ("gpt3-tiny", "gpt3-small"),
    ("t5-tiny", "t5-small"),
    ("bart-tiny", "bart-base"),
]:
    PRESETS[_name] = {**PRESETS[_base], **_TINY}
PRESETS["albert-tiny"]["embedding_size"] = 32
PRESETS["electra-tiny"]["embedding_size"] = 32
PRESETS["t5-tiny"]["head_dim"] = 16
PRESETS["gpt3-tiny"]["local_window"] = 16


def names() -> list[str]:
    """All preset names."""
    return list(PRESETS)


def get(name: str, **overrides: Any) -> ModelConfig:
    """The preset ``name`` as a fresh :class:`ModelConfig`, with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})
