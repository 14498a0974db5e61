"""Every full-size preset has the published parameter count (within 1%), and — where
transformers implements the same architecture — exactly the count of the reference model.

Counts are taken on the meta device (nothing is allocated), tied weights counted once.
"""

from __future__ import annotations

import functools

import pytest
import torch

import triform

# preset: (published count in millions, source). Where a paper rounds too coarsely for a 1%
# check, the count of the reference configuration released with the weights is used and the
# paper's figure is given in the comment.
PUBLISHED: dict[str, tuple[float, str]] = {
    # Vaswani et al. 2017, Table 3 lists 65M for the base model, but its own hyper-parameters
    # (d_model 512, d_ff 2048, 6+6 layers, shared 37k source/target/output embedding) give 63.1M.
    "transformer-base": (63.1, "Vaswani et al. 2017 Table 3 hyper-parameters (table says 65M)"),
    "transformer-big": (213, "Vaswani et al. 2017, Table 3"),
    "bert-base": (110, "Devlin et al. 2019, section 3"),
    # the paper's 340M is 1.1% off what its architecture has
    "bert-large": (336.2, "HF bert-large-uncased config, BertForPreTraining (paper: 340M)"),
    "roberta-base": (125, "fairseq RoBERTa README (roberta.base)"),
    "roberta-large": (355, "fairseq RoBERTa README (roberta.large)"),
    "albert-base": (11.8, "HF albert-base-v2 config, AlbertForPreTraining (paper Table 1: 12M)"),
    "albert-large": (18, "Lan et al. 2020, Table 1"),
    "albert-xlarge": (59.0, "HF albert-xlarge-v2 config, AlbertForPreTraining (paper: 60M)"),
    "albert-xxlarge": (223.2, "HF albert-xxlarge-v2 config, AlbertForPreTraining (paper: 235M)"),
    "electra-small": (13.5, "HF electra-small-discriminator config (paper Table 1: 14M)"),
    "electra-base": (110, "Clark et al. 2020, Table 1"),
    "electra-large": (335, "Clark et al. 2020, Table 1"),
    "gpt": (117, "the count usually quoted for GPT-1 (Radford et al. 2018 gives none)"),
    # the GPT-2 paper's 117M / 345M / 762M / 1542M were miscounts; OpenAI's gpt-2 README
    # names the released models by the corrected counts
    "gpt2": (124, "OpenAI gpt-2 README (paper Table 2: 117M, a miscount)"),
    "gpt2-medium": (355, "OpenAI gpt-2 README (paper: 345M)"),
    "gpt2-large": (774, "OpenAI gpt-2 README (paper: 762M)"),
    "gpt2-xl": (1558, "OpenAI gpt-2 README (paper: 1542M)"),
    "gpt3-small": (125, "Brown et al. 2020, Table 2.1"),
    # Table 2.1's 350M is rounded down: the same shape (GPT-2 with a 2048 context) has 355.9M
    "gpt3-medium": (355.9, "HF GPT2Config(n_positions=2048, n_embd=1024, n_layer=24, n_head=16)"),
    "t5-small": (60, "Raffel et al. 2020, section 3.7"),
    "t5-base": (222.9, "HF t5-base config, T5ForConditionalGeneration (paper: 220M)"),
    "t5-large": (737.7, "HF t5-large config, T5ForConditionalGeneration (paper: 770M)"),
    "bart-base": (140, "fairseq BART README (bart.base)"),
    "bart-large": (406.3, "HF facebook/bart-large config (fairseq README: 400M)"),
}

_BART_BASE = dict(
    d_model=768,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=12,
    decoder_attention_heads=12,
    encoder_ffn_dim=3072,
    decoder_ffn_dim=3072,
)
_ROBERTA = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1)
_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
)


def _bert_sizes(hidden: int, layers: int, heads: int, ffn: int) -> dict:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
    )


# preset: (transformers class, config class, config kwargs, triform count - transformers count).
# The only difference: BART's final_logits_bias is a buffer in transformers and a parameter
# (the LM-head bias) in triform, so triform counts vocab_size more.
REFERENCE: dict[str, tuple[str, str, dict, int]] = {
    "bert-base": ("BertForPreTraining", "BertConfig", {}, 0),
    "bert-large": ("BertForPreTraining", "BertConfig", _LARGE, 0),
    "roberta-base": ("RobertaForMaskedLM", "RobertaConfig", _ROBERTA, 0),
    "roberta-large": ("RobertaForMaskedLM", "RobertaConfig", {**_ROBERTA, **_LARGE}, 0),
    "albert-base": ("AlbertForPreTraining", "AlbertConfig", _bert_sizes(768, 12, 12, 3072), 0),
    "albert-large": ("AlbertForPreTraining", "AlbertConfig", _LARGE, 0),
    "albert-xlarge": ("AlbertForPreTraining", "AlbertConfig", _bert_sizes(2048, 24, 16, 8192), 0),
    "albert-xxlarge": ("AlbertForPreTraining", "AlbertConfig", {}, 0),
    "electra-small": ("ElectraForPreTraining", "ElectraConfig", {}, 0),
    "electra-base": (
        "ElectraForPreTraining",
        "ElectraConfig",
        {**_bert_sizes(768, 12, 12, 3072), "embedding_size": 768},
        0,
    ),
    "electra-large": (
        "ElectraForPreTraining",
        "ElectraConfig",
        {**_LARGE, "embedding_size": 1024},
        0,
    ),
    "gpt": ("OpenAIGPTLMHeadModel", "OpenAIGPTConfig", {}, 0),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", {}, 0),
    "gpt2-medium": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=1024, n_layer=24, n_head=16), 0),
    "gpt2-large": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=1280, n_layer=36, n_head=20), 0),
    "gpt2-xl": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=1600, n_layer=48, n_head=25), 0),
    # GPT-3's locally banded layers change no parameter: GPT-2 with a 2048 context
    "gpt3-small": ("GPT2LMHeadModel", "GPT2Config", dict(n_positions=2048), 0),
    "gpt3-medium": (
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(n_positions=2048, n_embd=1024, n_layer=24, n_head=16),
        0,
    ),
    "t5-small": ("T5ForConditionalGeneration", "T5Config", {}, 0),
    "t5-base": (
        "T5ForConditionalGeneration",
        "T5Config",
        dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12),
        0,
    ),
    "t5-large": (
        "T5ForConditionalGeneration",
        "T5Config",
        dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16),
        0,
    ),
    "bart-base": ("BartForConditionalGeneration", "BartConfig", _BART_BASE, 50265),
    "bart-large": ("BartForConditionalGeneration", "BartConfig", {}, 50265),
}

FULL_SIZE = [name for name in triform.presets.names() if not name.endswith("-tiny")]


@functools.cache
def _triform_count(name: str) -> int:
    return triform.build_model(triform.presets.get(name), device="meta").num_parameters()


def test_every_full_size_preset_has_a_published_count() -> None:
    assert sorted(PUBLISHED) == sorted(FULL_SIZE)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_parameter_count_matches_the_published_one(name: str) -> None:
    published, source = PUBLISHED[name]
    ours = _triform_count(name) / 1e6
    assert abs(ours - published) / published < 0.01, (
        f"{name}: {ours:.2f}M vs {published}M ({source})"
    )


@pytest.mark.parametrize("name", list(REFERENCE))
def test_parameter_count_equals_transformers(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    cls, config_cls, kwargs, difference = REFERENCE[name]
    with torch.device("meta"):
        reference = getattr(transformers, cls)(getattr(transformers, config_cls)(**kwargs))
    theirs = sum(p.numel() for p in reference.parameters())  # shared parameters once
    assert _triform_count(name) == theirs + difference
