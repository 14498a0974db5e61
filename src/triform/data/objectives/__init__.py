"""Pretraining objectives: vectorised transforms from token ids to model inputs and targets.

Every objective is a class with a config dataclass and
``__call__(batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]``; all
randomness comes from the generator (static MLM masking: from a fixed seed), so the same
code gives the same batches on one process or many and on a resumed run.

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
seq2seq            :class:`Seq2Seq`                    Transformer (parallel text)
=================  ==================================  =========================================

Build one from the ``[objective]`` table of a run with :func:`build_objective`, passing the
tokenizer's ids: ``build_objective(table, **context_from_tokenizer(tokenizer))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from triform.data.objectives._common import (
    IGNORE_INDEX,
    MODEL_KEYS,
    Objective,
    hash_uniform,
    shift_right,
    token_cross_entropy,
)
from triform.data.objectives.causal_lm import CausalLM, CausalLMConfig, pack_documents
from triform.data.objectives.denoising import Denoising, DenoisingConfig
from triform.data.objectives.masked_lm import MaskedLM, MaskedLMConfig, continuation_table
from triform.data.objectives.replaced_token import (
    ReplacedTokenConfig,
    ReplacedTokenDetection,
    electra_loss,
    generator_config,
    sample_replacements,
    share_embeddings,
)
from triform.data.objectives.sentence_pairs import (
    NextSentencePrediction,
    SentenceOrderPrediction,
    SentencePairConfig,
    pretraining_loss,
)
from triform.data.objectives.seq2seq import (
    ParallelCorpus,
    Seq2Seq,
    Seq2SeqConfig,
    label_smoothed_cross_entropy,
    read_pairs,
)
from triform.data.objectives.span_corruption import (
    SpanCorruption,
    SpanCorruptionConfig,
    corrupted_lengths,
    t5_span_lengths,
)
from triform.errors import ConfigError

OBJECTIVES: dict[str, type[Objective]] = {
    "causal-lm": CausalLM,
    "mlm": MaskedLM,
    "mlm-nsp": NextSentencePrediction,
    "mlm-sop": SentenceOrderPrediction,
    "span-corruption": SpanCorruption,
    "denoising": Denoising,
    "rtd": ReplacedTokenDetection,
    "seq2seq": Seq2Seq,
}


def build_objective(options: Mapping[str, Any], **context: Any) -> Objective:
    """The objective named ``options["name"]``, configured by the other keys of ``options``.

    ``context`` supplies defaults for keys the user did not set - usually
    :func:`context_from_tokenizer`, plus e.g. ``decoder_start_id`` from the model config.
    Unknown names, unknown keys and bad values raise :class:`ConfigError`.
    """
    if not isinstance(options, Mapping):
        raise ConfigError(f"[objective] must be a table, got {type(options).__name__}")
    name = options.get("name")
    if name not in OBJECTIVES:
        raise ConfigError(f"objective.name must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name].from_dict(options, **context)


def context_from_tokenizer(tokenizer: Any) -> dict[str, Any]:
    """The ids objectives take from a ``tokenizers.Tokenizer``: ``vocab_size``, ``pad_id``,
    ``mask_id``, ``cls_id``, ``sep_id``, ``bos_id``, ``eos_id``, ``special_ids`` (every special
    id), ``sentinel_ids`` (T5), ``sentence_end_ids`` (tokens that end a sentence, such as ".",
    "?!" or '."': :func:`triform.tokenizers.sentences.sentence_end_ids`), and the
    ``tokenizer`` itself (whole-word masking)."""
    from triform.tokenizers.sentences import sentence_end_ids
    from triform.tokenizers.specials import SpecialTokens

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
    "CausalLMConfig",
    "Denoising",
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
    "SpanCorruption",
    "SpanCorruptionConfig",
    "build_objective",
    "context_from_tokenizer",
    "continuation_table",
    "corrupted_lengths",
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
