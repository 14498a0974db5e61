"""Pretraining objectives, one module each, and the one registry of them.

Each module holds everything about its objective (config, vectorised transform, loss, reader,
model requirements, evaluation, sampling; see :mod:`triform.objectives.base`). Adding an
objective is one module and one line in :data:`OBJECTIVES`.

=================  ==================================  =========================================
name               class                               family
=================  ==================================  =========================================
causal-lm          :class:`CausalLM`                   GPT, GPT-2, GPT-3
mlm                :class:`MaskedLM`                   BERT, RoBERTa (static/dynamic, whole word)
mlm-nsp            :class:`NextSentencePrediction`     BERT
mlm-sop            :class:`SentenceOrderPrediction`    ALBERT
span-corruption    :class:`SpanCorruption`             T5
denoising          :class:`Denoising`                  BART
rtd                :class:`ReplacedTokenDetection`     ELECTRA
span-mlm           :class:`SpanMLM`                    SpanBERT (span masking + boundary objective)
distill            :class:`Distillation`               DistilBERT (a student learns from a teacher)
seq2seq            :class:`Seq2Seq`                    Transformer (parallel text)
=================  ==================================  =========================================

Build one from the ``[objective]`` table of a run with :func:`build_objective`, passing the
tokenizer's ids: ``build_objective(table, **context_from_tokenizer(tokenizer))``; a whole
run's task (objective + readers + model) with :func:`triform.train.task.build_task`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tokenizers

from triform.config import ModelConfig
from triform.errors import ConfigError
from triform.nn.losses import IGNORE_INDEX, token_cross_entropy
from triform.objectives.base import MODEL_KEYS, Objective
from triform.objectives.causal_lm import CausalLM, CausalLMConfig, pack_documents
from triform.objectives.denoising import Denoising, DenoisingConfig
from triform.objectives.distill import Distillation, DistillConfig, distillation_loss
from triform.objectives.masked_lm import MaskedLM, MaskedLMConfig, continuation_table
from triform.objectives.ops import SampleDraws, shift_right
from triform.objectives.replaced_token import (
    ElectraPair,
    ReplacedTokenConfig,
    ReplacedTokenDetection,
    electra_loss,
    generator_config,
    sample_replacements,
    share_embeddings,
)
from triform.objectives.sentence_pairs import (
    NextSentencePrediction,
    SentenceOrderPrediction,
    SentencePairConfig,
    pretraining_loss,
)
from triform.objectives.seq2seq import (
    PairBatches,
    ParallelCorpus,
    Seq2Seq,
    Seq2SeqConfig,
    label_smoothed_cross_entropy,
    read_pairs,
)
from triform.objectives.span_bert import SpanBertModel, SpanMaskingConfig, SpanMLM
from triform.objectives.span_corruption import (
    SpanCorruption,
    SpanCorruptionConfig,
    corrupted_lengths,
    t5_span_lengths,
)
from triform.tensors import hash_uniform
from triform.tokenizers.sentences import sentence_end_ids
from triform.tokenizers.specials import SpecialTokens

OBJECTIVES: dict[str, type[Objective]] = {
    objective.name: objective
    for objective in (
        CausalLM,
        MaskedLM,
        NextSentencePrediction,
        SentenceOrderPrediction,
        SpanCorruption,
        Denoising,
        ReplacedTokenDetection,
        Seq2Seq,
        SpanMLM,
        Distillation,
    )
}


def objective_class(options: Any) -> type[Objective]:
    """The class registered under ``options["name"]`` (``options``: an ``[objective]`` table)."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"[objective] must be a table, got {type(options).__name__}")
    name = options.get("name")
    if name not in OBJECTIVES:
        raise ConfigError(f"objective.name must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def build_objective(options: Mapping[str, Any], **context: Any) -> Objective:
    """The objective named ``options["name"]``, configured by the other keys of ``options``.

    ``context`` supplies defaults for keys the user did not set - usually
    :func:`context_from_tokenizer`, plus e.g. ``decoder_start_id`` from the model config.
    Unknown names, unknown keys and bad values raise :class:`ConfigError`.
    """
    return objective_class(options).from_dict(options, **context)


def build_objective_for_run(
    run: Any, model_config: ModelConfig, tokenizer: tokenizers.Tokenizer
) -> tuple[Objective, ModelConfig]:
    """A run's objective, configured by ``run.objective`` and the tokenizer's ids, and the
    model config fitted to it (its heads). Reads nothing but the tokenizer."""
    model_config = objective_class(run.objective).fit_model_config(model_config)
    context = context_from_tokenizer(tokenizer)
    context["decoder_start_id"] = model_config.decoder_start_token_id
    return build_objective(run.objective, **context), model_config


def context_from_tokenizer(tokenizer: Any) -> dict[str, Any]:
    """The ids objectives take from a ``tokenizers.Tokenizer``: ``vocab_size``, ``pad_id``,
    ``mask_id``, ``cls_id``, ``sep_id``, ``bos_id``, ``eos_id``, ``special_ids`` (every special
    id), ``sentinel_ids`` (T5), ``sentence_end_ids`` (tokens that end a sentence, such as ".",
    "?!" or '."': :func:`triform.tokenizers.sentences.sentence_end_ids`), and the
    ``tokenizer`` itself (whole-word masking)."""

    special = SpecialTokens.from_tokenizer(tokenizer)
    return {
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "pad_id": special.pad_id,
        "mask_id": special.mask_id,
        "cls_id": special.cls_id,
        "sep_id": special.sep_id,
        "bos_id": special.bos_id,
        "eos_id": special.eos_id if special.eos_id is not None else special.sep_id,
        "special_ids": special.all_special_ids,
        "sentinel_ids": list(special.sentinel_ids),
        "sentence_end_ids": sentence_end_ids(tokenizer),
        "tokenizer": tokenizer,
    }


__all__ = [
    "IGNORE_INDEX",
    "MODEL_KEYS",
    "OBJECTIVES",
    "CausalLM",
    "ElectraPair",
    "PairBatches",
    "CausalLMConfig",
    "Denoising",
    "DistillConfig",
    "Distillation",
    "DenoisingConfig",
    "MaskedLM",
    "MaskedLMConfig",
    "NextSentencePrediction",
    "Objective",
    "ParallelCorpus",
    "ReplacedTokenConfig",
    "ReplacedTokenDetection",
    "SentenceOrderPrediction",
    "SentencePairConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "SpanBertModel",
    "SpanCorruption",
    "SpanCorruptionConfig",
    "SpanMLM",
    "SampleDraws",
    "SpanMaskingConfig",
    "build_objective",
    "build_objective_for_run",
    "objective_class",
    "context_from_tokenizer",
    "continuation_table",
    "corrupted_lengths",
    "distillation_loss",
    "electra_loss",
    "generator_config",
    "hash_uniform",
    "label_smoothed_cross_entropy",
    "pack_documents",
    "pretraining_loss",
    "read_pairs",
    "sample_replacements",
    "shift_right",
    "share_embeddings",
    "t5_span_lengths",
    "token_cross_entropy",
]
