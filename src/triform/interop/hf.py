"""HuggingFace ``transformers`` checkpoints <-> triform models, both ways, with the same outputs.

::

    m = hf.from_hf(hf_model)   # a transformers model object -> triform model, same weights
    hf_model = hf.to_hf(m)     # and back (needs transformers)
    m = hf.load("dir")         # an HF checkpoint folder; works without transformers
    hf.save(m, "dir")          # a folder from_pretrained loads; works without transformers

Families (HF ``model_type``) and classes: see :data:`FAMILIES` — BERT, RoBERTa, ALBERT, ELECTRA,
GPT (``openai-gpt``), GPT-2, T5 (v1.0 and v1.1) and BART, each with its base model and its
pretraining / language-modelling head classes.

**How.** A family is declarative: a table of config :class:`Field` s (HF key <-> ModelConfig
field), the HF classes it supports with the head settings each one implies (:class:`Arch`), and
tables of name :class:`Rule` s saying which HF module(s) hold each triform module's weights. One
generic engine applies the tables in both directions:

* triform fuses q, k, v into one ``qkv`` linear (cross-attention: k, v into ``kv``); a rule lists
  the HF parts, concatenated along the output dimension on load and split on export;
* GPT and GPT-2 use ``Conv1D``, whose weight is the transpose of ``nn.Linear``'s;
* BART's ``final_logits_bias`` buffer, shape (1, V), is triform's LM-head bias, shape (V,).

**The HF class** a model came from is kept as the plain attribute ``model.hf_architecture``
(set by :func:`from_hf` and :func:`load`). :func:`save` and :func:`to_hf` write that class back;
without the attribute (a model trained in triform) the class is inferred from the config's heads.
Export refuses a config HF cannot express (checked by converting the HF config back).

**Strictness.** A missing tensor, a tensor of the wrong shape, or a key no rule of the family
knows raises :class:`~triform.errors.TriformError` naming the key. Keys the family knows but the
chosen class does not use (the NSP head in a checkpoint loaded as ``BertForMaskedLM``) are
skipped, as transformers skips them. A tied LM head whose checkpoint values differ from the
embedding is untied, as transformers does. Weights are loaded as float32; :func:`load` returns
the model in eval mode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.models import TransformerModel, build_model
from triform.presets import PRESETS

StateDict = dict[str, torch.Tensor]

__all__ = [
    "FAMILIES",
    "config_from_hf",
    "config_to_hf",
    "from_hf",
    "load",
    "read_config",
    "read_weights",
    "save",
    "to_hf",
]


# =========================================================================================
# Declarations: rules, fields, architectures, families
# =========================================================================================
@dataclass(frozen=True)
class Rule:
    """triform module (or parameter) ``ours`` holds the weights of HF module(s) ``theirs``.

    ``{i}`` stands for a layer index on both sides. Several ``theirs`` are fused along dim 0
    (q, k, v -> qkv). ``kind``: "linear" (same layout), "conv" (HF ``Conv1D``: the weight is
    transposed) or "row" (HF keeps a (1, n) buffer for our (n,) vector). ``aliases``: other
    HF names of the same tensor (tied copies), accepted on load and never written.
    """

    ours: str
    theirs: tuple[str, ...]
    kind: str = "linear"
    aliases: tuple[str, ...] = ()


def same(ours: str, theirs: str, *aliases: str) -> Rule:
    """One HF module with the same layout (``aliases``: tied copies of it)."""
    return Rule(ours, (theirs,), aliases=aliases)


def fused(ours: str, *theirs: str) -> Rule:
    """Several HF linears concatenated along the output dimension in triform."""
    return Rule(ours, theirs)


def conv(ours: str, theirs: str) -> Rule:
    """An HF ``Conv1D`` (GPT, GPT-2): weight (in, out) instead of (out, in)."""
    return Rule(ours, (theirs,), kind="conv")


def row(ours: str, theirs: str) -> Rule:
    """An HF (1, n) tensor for a triform (n,) vector (BART's ``final_logits_bias``)."""
    return Rule(ours, (theirs,), kind="row")


def _place(rule: Rule, ours: str = "", theirs: str = "") -> Rule:
    """``rule`` with its triform names under ``ours`` and its HF names under ``theirs``."""

    def join(prefix: str, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    return Rule(
        join(ours, rule.ours),
        tuple(join(theirs, t) for t in rule.theirs),
        rule.kind,
        tuple(join(theirs, a) for a in rule.aliases),
    )


def stack(ours: str, theirs: str, table: Iterable[Rule]) -> tuple[Rule, ...]:
    """The rules of one layer placed under ``ours`` / ``theirs`` (each may contain ``{i}``)."""
    return tuple(_place(r, ours, theirs) for r in table)


@dataclass(frozen=True)
class Codec:
    """How a value is spelled in an HF config (``inward``: HF -> ours, ``outward``: back).

    Each side is a mapping (a value it lacks is unsupported) or a function."""

    inward: Mapping[Any, Any] | Callable[[Any], Any]
    outward: Mapping[Any, Any] | Callable[[Any], Any]


_UNSUPPORTED = object()


def _apply(side: Mapping[Any, Any] | Callable[[Any], Any], value: Any) -> Any:
    if callable(side):
        return side(value)
    return side.get(value, _UNSUPPORTED) if isinstance(value, (str, int, float)) else _UNSUPPORTED


@dataclass(frozen=True)
class Field:
    """HF config key ``hf`` is ModelConfig field ``ours``; ``default`` is transformers' default
    when config.json leaves the key out."""

    hf: str
    ours: str
    default: Any = None
    codec: Codec | None = None


@dataclass(frozen=True)
class Arch:
    """One HF class: is its body under the family's base-model prefix, and which head settings
    (ModelConfig fields) it implies."""

    prefixed: bool
    heads: Mapping[str, Any] = field(default_factory=dict)


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Family:
    """Everything the engine needs to convert one HF ``model_type``.

    ``preset``: the triform preset holding the family settings (norm placement, ...).
    ``prefix``: HF base-model prefix of the head classes ("bert", "transformer", ...).
    ``architectures``: supported classes, the preferred export class first, the base model last.
    ``body`` / ``heads``: name rules; body names sit under ``prefix``, head names do not.
    ``gated``: rules that take precedence when the activation is gated (T5 v1.1's ``wi_1``).
    ``ignore``: regexes of HF keys that carry no weights (cached masks, position ids).
    ``adjust_in(hf_config, values)`` / ``adjust_out(config, hf_config)``: what the field
    table cannot say (derived sizes, checks of unsupported options).
    """

    model_type: str
    preset: str
    prefix: str
    architectures: Mapping[str, Arch]
    fields: tuple[Field, ...]
    body: tuple[Rule, ...]
    heads: tuple[Rule, ...] = ()
    gated: tuple[Rule, ...] = ()
    ignore: tuple[str, ...] = (r"(^|\.)position_ids$",)
    adjust_in: Callable[[Mapping[str, Any], dict[str, Any]], None] = _nothing
    adjust_out: Callable[[ModelConfig, dict[str, Any]], None] = _nothing

    @property
    def triform_family(self) -> str:
        return PRESETS[self.preset]["family"]

    def rules(self, config: ModelConfig) -> list[_Compiled]:
        """The compiled rules for ``config``, in matching order (first match wins)."""
        gated = config.activation.startswith("gated-")
        return self._compiled_gated if gated else self._compiled_plain

    @cached_property
    def _compiled_plain(self) -> list[_Compiled]:
        body = [_place(r, theirs=self.prefix) for r in self.body]
        return [_Compiled(r) for r in (*body, *self.heads)]

    @cached_property
    def _compiled_gated(self) -> list[_Compiled]:
        gated = [_Compiled(_place(r, theirs=self.prefix)) for r in self.gated]
        return gated + self._compiled_plain

    @cached_property
    def _known(self) -> list[re.Pattern[str]]:
        """HF-side patterns of every name any rule of the family knows."""
        return [p for c in self._compiled_gated for p in c.hf_patterns]

    def knows(self, key: str, max_layers: int | None = None) -> bool:
        """Does some rule name HF key ``key`` (with a layer index below ``max_layers``)?"""
        for pattern in self._known:
            m = pattern.fullmatch(key)
            if m and (max_layers is None or "i" not in m.groupdict() or int(m["i"]) < max_layers):
                return True
        return False

    def ignores(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.ignore)


_LEAF = r"(?:\.(?P<leaf>weight|bias))?"


class _Compiled:
    """A rule with its triform-side regex and its HF-side regexes."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.ours = re.compile(_pattern(rule.ours) + _LEAF)
        self.hf_patterns = [re.compile(_pattern(n) + _LEAF) for n in (*rule.theirs, *rule.aliases)]


def _pattern(name: str) -> str:
    return re.escape(name).replace(r"\{i\}", r"(?P<i>\d+)")


@dataclass(frozen=True)
class _Match:
    """A triform tensor name resolved by a rule: the HF names of its parts (and aliases)."""

    theirs: list[str]
    aliases: list[str]
    kind: str
    leaf: str | None

    @property
    def names(self) -> list[str]:
        return [*self.theirs, *self.aliases]


# =========================================================================================
# The families
# =========================================================================================
# -- config codecs ------------------------------------------------------------------------
HIDDEN_ACT = Codec(
    {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"},
    {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"},
)
# openai-gpt's ``afn="gelu"`` is the tanh approximation (transformers' gelu_new).
GPT_ACT = Codec({"gelu": "gelu_tanh", "relu": "relu"}, {"gelu_tanh": "gelu", "relu": "relu"})
# T5's "gated-gelu" is gelu_new (tanh approximation) on the gate, times a second projection.
T5_ACT = Codec(
    {
        "relu": "relu",
        "gelu": "gelu",
        "gelu_new": "gelu_tanh",
        "gated-gelu": "gated-gelu_tanh",
        "gated-gelu_new": "gated-gelu_tanh",
        "gated-silu": "gated-silu",
    },
    {
        "relu": "relu",
        "gelu": "gelu",
        "gelu_tanh": "gelu_new",
        "gated-gelu_tanh": "gated-gelu",
        "gated-silu": "gated-silu",
    },
)
# Token ids: HF allows a list (several end-of-sequence ids); triform keeps the first.
TOKEN = Codec(lambda v: v[0] if isinstance(v, list) and v else v, lambda v: v)


def _bert_fields(**defaults: Any) -> tuple[Field, ...]:
    """BERT-style config fields; ``defaults`` are transformers' defaults for the family."""
    table = (
        Field("vocab_size", "vocab_size", 30522),
        Field("hidden_size", "hidden_size", 768),
        Field("num_hidden_layers", "num_layers", 12),
        Field("num_attention_heads", "num_heads", 12),
        Field("intermediate_size", "ffn_size", 3072),
        Field("max_position_embeddings", "max_positions", 512),
        Field("type_vocab_size", "type_vocab_size", 2),
        Field("layer_norm_eps", "norm_eps", 1e-12),
        Field("hidden_act", "activation", "gelu", HIDDEN_ACT),
        Field("hidden_dropout_prob", "dropout", 0.1),
        Field("attention_probs_dropout_prob", "attention_dropout", 0.1),
        Field("initializer_range", "init_std", 0.02),
        Field("tie_word_embeddings", "tie_embeddings", True),
        Field("pad_token_id", "pad_token_id", 0, TOKEN),
        Field("bos_token_id", "bos_token_id", None, TOKEN),
        Field("eos_token_id", "eos_token_id", None, TOKEN),
    )
    return tuple(Field(f.hf, f.ours, defaults.get(f.hf, f.default), f.codec) for f in table)


def _check_bert(hf: Mapping[str, Any], values: dict[str, Any]) -> None:
    """Options of BERT-style configs triform does not model."""
    kind = hf.get("position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise TriformError(f"position_embedding_type={kind!r} is not supported (only absolute)")
    for flag in ("is_decoder", "add_cross_attention"):
        if hf.get(flag):
            raise TriformError(f"{flag}=true is not supported for encoder families")


def _fixed_gelu_head(values: dict[str, Any], what: str) -> None:
    """RoBERTa's and ELECTRA's generator MLM heads use exact GELU whatever hidden_act says."""
    if values["encoder_head"] == "mlm" and values["activation"] != "gelu":
        raise TriformError(f"{what} with hidden_act other than gelu is not supported")


def _roberta_in(hf: Mapping[str, Any], values: dict[str, Any]) -> None:
    # RoBERTa counts positions from padding_idx + 1 = pad_token_id + 1 (table rows before
    # that are never used); max_position_embeddings includes those rows.
    _check_bert(hf, values)
    _fixed_gelu_head(values, "RobertaForMaskedLM")
    pad = values["pad_token_id"]
    if pad is None:
        raise TriformError("RoBERTa needs pad_token_id (positions count from it)")
    values["position_offset"] = pad + 1
    values["max_positions"] = values["max_positions"] - pad - 1


def _roberta_out(config: ModelConfig, hf: dict[str, Any]) -> None:
    hf["max_position_embeddings"] = config.max_positions + config.position_offset


def _albert_in(hf: Mapping[str, Any], values: dict[str, Any]) -> None:
    _check_bert(hf, values)
    for key in ("num_hidden_groups", "inner_group_num"):
        if hf.get(key, 1) != 1:
            raise TriformError(f"ALBERT with {key}={hf[key]} is not supported (only 1)")
    if values["embedding_size"] == values["hidden_size"]:
        raise TriformError("ALBERT with embedding_size == hidden_size is not supported")


def _albert_out(config: ModelConfig, hf: dict[str, Any]) -> None:
    hf.update(num_hidden_groups=1, inner_group_num=1)


def _electra_in(hf: Mapping[str, Any], values: dict[str, Any]) -> None:
    _check_bert(hf, values)
    _fixed_gelu_head(values, "ElectraForMaskedLM")


def _gpt_fields(**defaults: Any) -> tuple[Field, ...]:
    table = (
        Field("vocab_size", "vocab_size", 50257),
        Field("n_positions", "max_positions", 1024),
        Field("n_embd", "hidden_size", 768),
        Field("n_layer", "num_layers", 12),
        Field("n_head", "num_heads", 12),
        Field("resid_pdrop", "dropout", 0.1),
        Field("attn_pdrop", "attention_dropout", 0.1),
        Field("layer_norm_epsilon", "norm_eps", 1e-5),
        Field("initializer_range", "init_std", 0.02),
        Field("tie_word_embeddings", "tie_embeddings", True),
        Field("pad_token_id", "pad_token_id", None, TOKEN),
        Field("bos_token_id", "bos_token_id", 50256, TOKEN),
        Field("eos_token_id", "eos_token_id", 50256, TOKEN),
    )
    return tuple(Field(f.hf, f.ours, defaults.get(f.hf, f.default), f.codec) for f in table)


def _gpt_in(hf: Mapping[str, Any], values: dict[str, Any]) -> None:
    values["ffn_size"] = 4 * values["hidden_size"]  # fixed in openai-gpt


def _gpt2_in(hf: Mapping[str, Any], values: dict[str, Any]) -> None:
    values["ffn_size"] = values["ffn_size"] or 4 * values["hidden_size"]
    unsupported = {
        "scale_attn_weights": False,
        "scale_attn_by_inverse_layer_idx": True,
        "add_cross_attention": True,
    }
    for key, bad in unsupported.items():
        if key in hf and hf[key] == bad:
            raise TriformError(f"GPT-2 with {key}={bad} is not supported")


def _gpt_out(config: ModelConfig, hf: dict[str, Any]) -> None:
    hf["embd_pdrop"] = config.dropout


def _t5_in(hf: Mapping[str, Any], values: dict[str, Any]) -> None:
    # transformers 5 always ties T5's LM head to the embedding and keeps "scale the decoder
    # output by d_model**-0.5" (v1.0) as its own flag; older configs said both with
    # tie_word_embeddings (false for v1.1: untied and unscaled). An untied checkpoint is
    # detected from the weights (see _untie).
    tied = hf.get("tie_word_embeddings", True) is not False
    values["tie_embeddings"] = tied
    values["scale_tied_logits"] = bool(hf.get("scale_decoder_outputs", tied))
    values["attention_dropout"] = values["dropout"]
    if values["num_decoder_layers"] is None:
        values["num_decoder_layers"] = values["num_layers"]


def _t5_out(config: ModelConfig, hf: dict[str, Any]) -> None:
    hf.update(
        tie_word_embeddings=config.tie_embeddings,
        scale_decoder_outputs=config.scale_tied_logits,
        num_decoder_layers=config.decoder_layers,
        is_encoder_decoder=True,
    )


def _bart_in(hf: Mapping[str, Any], values: dict[str, Any]) -> None:
    for key, ours in (("decoder_attention_heads", "num_heads"), ("decoder_ffn_dim", "ffn_size")):
        if hf.get(key, values[ours]) != values[ours]:
            raise TriformError(f"BART with {key} != its encoder counterpart is not supported")
    for flag in ("normalize_before", "add_final_layer_norm", "add_bias_logits"):
        if hf.get(flag):
            raise TriformError(f"BART with {flag}=true is not supported")


def _bart_out(config: ModelConfig, hf: dict[str, Any]) -> None:
    hf.update(
        decoder_attention_heads=config.num_heads,
        decoder_ffn_dim=config.ffn_size,
        decoder_layers=config.decoder_layers,
        is_encoder_decoder=True,
    )


# -- name tables ----------------------------------------------------------------------------
BERT_EMBEDDINGS = (
    same("embeddings.token", "embeddings.word_embeddings"),
    same("embeddings.segment", "embeddings.token_type_embeddings"),
    same("embeddings.position", "embeddings.position_embeddings"),
    same("embeddings.norm", "embeddings.LayerNorm"),
)
BERT_LAYER = (
    fused("self_attn.qkv", "attention.self.query", "attention.self.key", "attention.self.value"),
    same("self_attn.out", "attention.output.dense"),
    same("self_norm", "attention.output.LayerNorm"),
    same("ffn.up", "intermediate.dense"),
    same("ffn.down", "output.dense"),
    same("ffn_norm", "output.LayerNorm"),
)
BERT_BODY = (
    *BERT_EMBEDDINGS,
    *stack("encoder.layers.{i}", "encoder.layer.{i}", BERT_LAYER),
    same("pooler.dense", "pooler.dense"),
)
BERT_HEADS = (
    same("lm_head.transform.0", "cls.predictions.transform.dense"),
    same("lm_head.transform.2", "cls.predictions.transform.LayerNorm"),
    same("lm_head.decoder.bias", "cls.predictions.bias", "cls.predictions.decoder.bias"),
    same("lm_head.decoder", "cls.predictions.decoder"),
    same("pair_head.classifier", "cls.seq_relationship"),
)
ROBERTA_HEADS = (
    same("lm_head.transform.0", "lm_head.dense"),
    same("lm_head.transform.2", "lm_head.layer_norm"),
    same("lm_head.decoder.bias", "lm_head.bias", "lm_head.decoder.bias"),
    same("lm_head.decoder", "lm_head.decoder"),
)
ALBERT_LAYER = (
    fused("self_attn.qkv", "attention.query", "attention.key", "attention.value"),
    same("self_attn.out", "attention.dense"),
    same("self_norm", "attention.LayerNorm"),
    same("ffn.up", "ffn"),
    same("ffn.down", "ffn_output"),
    same("ffn_norm", "full_layer_layer_norm"),
)
ALBERT_BODY = (
    *BERT_EMBEDDINGS,
    same("embeddings.project", "encoder.embedding_hidden_mapping_in"),
    # one layer shared by the whole stack (num_hidden_groups = inner_group_num = 1)
    *stack("encoder.layers.0", "encoder.albert_layer_groups.0.albert_layers.0", ALBERT_LAYER),
    same("pooler.dense", "pooler"),
)
ALBERT_HEADS = (
    same("lm_head.transform.0", "predictions.dense"),
    same("lm_head.transform.2", "predictions.LayerNorm"),
    same("lm_head.decoder.bias", "predictions.bias", "predictions.decoder.bias"),
    same("lm_head.decoder", "predictions.decoder"),
    same("pair_head.classifier", "sop_classifier.classifier"),
)
ELECTRA_BODY = (
    *BERT_EMBEDDINGS,
    same("embeddings.project", "embeddings_project"),
    *stack("encoder.layers.{i}", "encoder.layer.{i}", BERT_LAYER),
)
ELECTRA_HEADS = (
    same("rtd_head.dense", "discriminator_predictions.dense"),
    same("rtd_head.prediction", "discriminator_predictions.dense_prediction"),
    same("lm_head.transform.0", "generator_predictions.dense"),
    same("lm_head.transform.2", "generator_predictions.LayerNorm"),
    same("lm_head.decoder", "generator_lm_head"),
)
GPT_LAYER = (  # openai-gpt and GPT-2 name their blocks alike; only the norm placement differs
    same("self_norm", "ln_1"),
    conv("self_attn.qkv", "attn.c_attn"),
    conv("self_attn.out", "attn.c_proj"),
    same("ffn_norm", "ln_2"),
    conv("ffn.up", "mlp.c_fc"),
    conv("ffn.down", "mlp.c_proj"),
)
GPT_BODY = (
    same("embeddings.token", "tokens_embed"),
    same("embeddings.position", "positions_embed"),
    *stack("decoder.layers.{i}", "h.{i}", GPT_LAYER),
)
GPT2_BODY = (
    same("embeddings.token", "wte"),
    same("embeddings.position", "wpe"),
    *stack("decoder.layers.{i}", "h.{i}", GPT_LAYER),
    same("decoder.final_norm", "ln_f"),
)
LM_HEAD = (same("lm_head.decoder", "lm_head"),)
# Cached causal masks of old openai-gpt / GPT-2 checkpoints.
GPT_IGNORE = (r"(^|\.)position_ids$", r"(^|\.)attn\.(masked_)?bias$")

T5_SELF = (
    fused(
        "self_attn.qkv",
        "layer.0.SelfAttention.q",
        "layer.0.SelfAttention.k",
        "layer.0.SelfAttention.v",
    ),
    same("self_attn.out", "layer.0.SelfAttention.o"),
    same("self_norm", "layer.0.layer_norm"),
)
T5_CROSS = (
    same("cross_attn.q", "layer.1.EncDecAttention.q"),
    fused("cross_attn.kv", "layer.1.EncDecAttention.k", "layer.1.EncDecAttention.v"),
    same("cross_attn.out", "layer.1.EncDecAttention.o"),
    same("cross_norm", "layer.1.layer_norm"),
)


def _t5_ffn(n: int) -> tuple[Rule, ...]:
    """The feed-forward sub-layer, ``layer.{n}`` of a T5 block (1: encoder, 2: decoder)."""
    return (
        same("ffn.gate", f"layer.{n}.DenseReluDense.wi_0"),
        same("ffn.up", f"layer.{n}.DenseReluDense.wi"),
        same("ffn.down", f"layer.{n}.DenseReluDense.wo"),
        same("ffn_norm", f"layer.{n}.layer_norm"),
    )


T5_BODY = (
    same("encoder_embeddings.token", "shared", "encoder.embed_tokens"),
    same("decoder_embeddings.token", "decoder.embed_tokens"),
    same(
        "encoder.relative_bias.embedding",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
    ),
    same(
        "decoder.relative_bias.embedding",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias",
    ),
    *stack("encoder.layers.{i}", "encoder.block.{i}", (*T5_SELF, *_t5_ffn(1))),
    *stack("decoder.layers.{i}", "decoder.block.{i}", (*T5_SELF, *T5_CROSS, *_t5_ffn(2))),
    same("encoder.final_norm", "encoder.final_layer_norm"),
    same("decoder.final_norm", "decoder.final_layer_norm"),
)
T5_GATED = (  # v1.1: wi_0 is the gate (above), wi_1 the linear branch
    *stack(
        "encoder.layers.{i}", "encoder.block.{i}", [same("ffn.up", "layer.1.DenseReluDense.wi_1")]
    ),
    *stack(
        "decoder.layers.{i}", "decoder.block.{i}", [same("ffn.up", "layer.2.DenseReluDense.wi_1")]
    ),
)
BART_SELF = (
    fused("self_attn.qkv", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    same("self_attn.out", "self_attn.out_proj"),
    same("self_norm", "self_attn_layer_norm"),
)
BART_CROSS = (
    same("cross_attn.q", "encoder_attn.q_proj"),
    fused("cross_attn.kv", "encoder_attn.k_proj", "encoder_attn.v_proj"),
    same("cross_attn.out", "encoder_attn.out_proj"),
    same("cross_norm", "encoder_attn_layer_norm"),
)
BART_FFN = (same("ffn.up", "fc1"), same("ffn.down", "fc2"), same("ffn_norm", "final_layer_norm"))
BART_BODY = (
    same("encoder_embeddings.token", "shared", "encoder.embed_tokens"),
    same("decoder_embeddings.token", "decoder.embed_tokens"),
    same("encoder_embeddings.position", "encoder.embed_positions"),
    same("decoder_embeddings.position", "decoder.embed_positions"),
    same("encoder_embeddings.norm", "encoder.layernorm_embedding"),
    same("decoder_embeddings.norm", "decoder.layernorm_embedding"),
    *stack("encoder.layers.{i}", "encoder.layers.{i}", (*BART_SELF, *BART_FFN)),
    *stack("decoder.layers.{i}", "decoder.layers.{i}", (*BART_SELF, *BART_CROSS, *BART_FFN)),
)
BART_HEADS = (row("lm_head.decoder.bias", "final_logits_bias"), *LM_HEAD)

# -- head settings of each class ----------------------------------------------------------
_MLM_NSP = dict(encoder_head="mlm", pair_head="nsp", pooler=True)
_MLM_SOP = dict(encoder_head="mlm", pair_head="sop", pooler=True)
_MLM = dict(encoder_head="mlm", pair_head="none", pooler=False)
_RTD = dict(encoder_head="rtd", pair_head="none", pooler=False)
_BODY_POOLED = dict(encoder_head="none", pair_head="none", pooler=True)
_BODY = dict(encoder_head="none", pair_head="none", pooler=False)
_TIED = dict(tie_embeddings=True)  # a base model has no LM head: triform's is the embedding

FAMILIES: dict[str, Family] = {
    "bert": Family(
        model_type="bert",
        preset="bert-base",
        prefix="bert",
        architectures={
            "BertForPreTraining": Arch(True, _MLM_NSP),
            "BertForMaskedLM": Arch(True, _MLM),
            "BertModel": Arch(False, _BODY_POOLED),
        },
        fields=_bert_fields(),
        body=BERT_BODY,
        heads=BERT_HEADS,
        adjust_in=_check_bert,
    ),
    "roberta": Family(
        model_type="roberta",
        preset="roberta-base",
        prefix="roberta",
        architectures={
            "RobertaForMaskedLM": Arch(True, _MLM),
            "RobertaModel": Arch(False, _BODY_POOLED),
        },
        fields=_bert_fields(vocab_size=50265, pad_token_id=1, bos_token_id=0, eos_token_id=2),
        body=BERT_BODY,
        heads=ROBERTA_HEADS,
        adjust_in=_roberta_in,
        adjust_out=_roberta_out,
    ),
    "albert": Family(
        model_type="albert",
        preset="albert-base",
        prefix="albert",
        architectures={
            "AlbertForPreTraining": Arch(True, _MLM_SOP),
            "AlbertForMaskedLM": Arch(True, _MLM),
            "AlbertModel": Arch(False, _BODY_POOLED),
        },
        fields=(
            *_bert_fields(
                vocab_size=30000,
                hidden_size=4096,
                num_attention_heads=64,
                intermediate_size=16384,
                hidden_act="gelu_new",
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
                bos_token_id=2,
                eos_token_id=3,
            ),
            Field("embedding_size", "embedding_size", 128),
        ),
        body=ALBERT_BODY,
        heads=ALBERT_HEADS,
        adjust_in=_albert_in,
        adjust_out=_albert_out,
    ),
    "electra": Family(
        model_type="electra",
        preset="electra-base",
        prefix="electra",
        architectures={
            "ElectraForPreTraining": Arch(True, _RTD),  # the discriminator
            "ElectraForMaskedLM": Arch(True, _MLM),  # the generator
            "ElectraModel": Arch(False, _BODY),
        },
        fields=(
            *_bert_fields(hidden_size=256, num_attention_heads=4, intermediate_size=1024),
            Field("embedding_size", "embedding_size", 128),
        ),
        body=ELECTRA_BODY,
        heads=ELECTRA_HEADS,
        adjust_in=_electra_in,
    ),
    "openai-gpt": Family(
        model_type="openai-gpt",
        preset="gpt",
        prefix="transformer",
        architectures={
            "OpenAIGPTLMHeadModel": Arch(True),
            "OpenAIGPTModel": Arch(False, _TIED),
        },
        fields=(
            *_gpt_fields(vocab_size=40478, n_positions=512, bos_token_id=None, eos_token_id=None),
            Field("afn", "activation", "gelu", GPT_ACT),
        ),
        body=GPT_BODY,
        heads=LM_HEAD,
        ignore=GPT_IGNORE,
        adjust_in=_gpt_in,
        adjust_out=_gpt_out,
    ),
    "gpt2": Family(
        model_type="gpt2",
        preset="gpt2",
        prefix="transformer",
        architectures={"GPT2LMHeadModel": Arch(True), "GPT2Model": Arch(False, _TIED)},
        fields=(
            *_gpt_fields(),
            Field("n_inner", "ffn_size", None),
            Field("activation_function", "activation", "gelu_new", HIDDEN_ACT),
        ),
        body=GPT2_BODY,
        heads=LM_HEAD,
        ignore=GPT_IGNORE,
        adjust_in=_gpt2_in,
        adjust_out=_gpt_out,
    ),
    "t5": Family(
        model_type="t5",
        preset="t5-small",
        prefix="",
        architectures={"T5ForConditionalGeneration": Arch(False), "T5Model": Arch(False, _TIED)},
        fields=(
            Field("vocab_size", "vocab_size", 32128),
            Field("d_model", "hidden_size", 512),
            Field("d_kv", "head_dim", 64),
            Field("d_ff", "ffn_size", 2048),
            Field("num_layers", "num_layers", 6),
            Field("num_decoder_layers", "num_decoder_layers", None),
            Field("num_heads", "num_heads", 8),
            Field("relative_attention_num_buckets", "relative_buckets", 32),
            Field("relative_attention_max_distance", "relative_max_distance", 128),
            Field("dropout_rate", "dropout", 0.1),
            Field("layer_norm_epsilon", "norm_eps", 1e-6),
            Field("feed_forward_proj", "activation", "relu", T5_ACT),
            Field("pad_token_id", "pad_token_id", 0, TOKEN),
            Field("eos_token_id", "eos_token_id", 1, TOKEN),
            Field("decoder_start_token_id", "decoder_start_token_id", 0, TOKEN),
        ),
        body=T5_BODY,
        heads=LM_HEAD,
        gated=T5_GATED,
        # an unused table some original checkpoints carry (transformers ignores it too)
        ignore=(
            r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",
        ),
        adjust_in=_t5_in,
        adjust_out=_t5_out,
    ),
    "bart": Family(
        model_type="bart",
        preset="bart-base",
        prefix="model",
        architectures={
            "BartForConditionalGeneration": Arch(True, dict(lm_head_bias=True)),
            "BartModel": Arch(False, dict(lm_head_bias=False, **_TIED)),
        },
        fields=(
            Field("vocab_size", "vocab_size", 50265),
            Field("d_model", "hidden_size", 1024),
            Field("encoder_layers", "num_layers", 12),
            Field("decoder_layers", "num_decoder_layers", 12),
            Field("encoder_attention_heads", "num_heads", 16),
            Field("encoder_ffn_dim", "ffn_size", 4096),
            Field("activation_function", "activation", "gelu", HIDDEN_ACT),
            Field("dropout", "dropout", 0.1),
            Field("attention_dropout", "attention_dropout", 0.0),
            Field("init_std", "init_std", 0.02),
            Field("max_position_embeddings", "max_positions", 1024),
            Field("scale_embedding", "scale_embeddings", False),
            Field("tie_word_embeddings", "tie_embeddings", True),
            Field("pad_token_id", "pad_token_id", 1, TOKEN),
            Field("bos_token_id", "bos_token_id", 0, TOKEN),
            Field("eos_token_id", "eos_token_id", 2, TOKEN),
            Field("decoder_start_token_id", "decoder_start_token_id", 2, TOKEN),
        ),
        body=BART_BODY,
        heads=BART_HEADS,
        ignore=(r"(^|\.)(en|de)coder\.version$",),  # fairseq leftovers
        adjust_in=_bart_in,
        adjust_out=_bart_out,
    ),
}


# =========================================================================================
# The engine: configs
# =========================================================================================
def _family(model_type: Any) -> Family:
    if model_type not in FAMILIES:
        raise TriformError(
            f"unsupported HuggingFace model_type {model_type!r} (supported: {', '.join(FAMILIES)})"
        )
    return FAMILIES[model_type]


def _family_of(config: ModelConfig) -> Family:
    for family in FAMILIES.values():
        if family.triform_family == config.family:
            return family
    supported = ", ".join(f.triform_family for f in FAMILIES.values())
    raise TriformError(
        f"triform family {config.family!r} has no HuggingFace equivalent (supported: {supported})"
    )


def _architecture_name(family: Family, name: Any) -> str:
    if name not in family.architectures:
        body = list(family.architectures)[-1]  # base models come last
        raise TriformError(
            f"unsupported HuggingFace class {name!r} for {family.model_type} "
            f"(supported: {', '.join(family.architectures)}; "
            f"hf.load(..., architecture={body!r}) loads the body alone)"
        )
    return name


def config_from_hf(hf: Mapping[str, Any], architecture: str) -> ModelConfig:
    """The :class:`ModelConfig` of an HF config dict (``config.json``) for class
    ``architecture``."""
    family = _family(hf.get("model_type"))
    arch = family.architectures[_architecture_name(family, architecture)]
    values: dict[str, Any] = {}
    for f in family.fields:
        raw = hf.get(f.hf, f.default)
        value = raw if f.codec is None else _apply(f.codec.inward, raw)
        if value is _UNSUPPORTED:
            raise TriformError(f"{family.model_type} config: {f.hf}={raw!r} is not supported")
        values[f.ours] = value
    values.update(arch.heads)
    family.adjust_in(hf, values)
    return ModelConfig.from_dict({**PRESETS[family.preset], **values})


def config_to_hf(config: ModelConfig, architecture: str) -> dict[str, Any]:
    """The HF config dict (``config.json``) of ``config`` as class ``architecture``; raises
    :class:`TriformError` naming the first setting HF cannot express."""
    family = _family_of(config)
    _architecture_name(family, architecture)
    hf: dict[str, Any] = {"model_type": family.model_type, "architectures": [architecture]}
    for f in family.fields:
        value = getattr(config, f.ours)
        hf_value = value if f.codec is None else _apply(f.codec.outward, value)
        if hf_value is _UNSUPPORTED:
            raise TriformError(
                f"model.{f.ours}={value!r} has no HuggingFace {family.model_type} equivalent"
            )
        hf[f.hf] = hf_value
    family.adjust_out(config, hf)
    ours, back = _architectural(config), _architectural(config_from_hf(hf, architecture))
    for key, value in ours.items():
        if back.get(key) != value:
            raise TriformError(
                f"model.{key}={value!r} cannot be expressed as a HuggingFace {architecture} "
                f"(it would become {back.get(key)!r})"
            )
    return hf


# Settings that do not change what a trained model computes.
_NOT_ARCHITECTURAL = (
    "family",
    "dropout",
    "attention_dropout",
    "init_std",
    "scaled_residual_init",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)


def _architectural(config: ModelConfig) -> dict[str, Any]:
    """The settings of ``config`` that change its outputs, with defaults made explicit and
    settings that are inert for this config (local_window of a dense model, ...) left out."""
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_ARCHITECTURAL}
    d.update(embedding_size=config.embed_size, head_dim=config.head_size)
    d["attention_pattern"] = sorted(set(config.attention_pattern))
    if config.positions_from_padding:
        d["pad_token_id"] = config.pad_token_id
    if config.form == "encoder-decoder":
        d["num_decoder_layers"] = config.decoder_layers
    else:
        del d["num_decoder_layers"], d["tie_encoder_decoder_embeddings"]
    if config.form != "encoder":
        del d["encoder_head"], d["pair_head"], d["pooler"]
    if "local" not in config.attention_pattern:
        del d["local_window"]
    if config.position != "relative":
        del d["relative_buckets"], d["relative_max_distance"]
    if config.position != "rotary":
        del d["rotary_fraction"], d["rotary_base"]
    if config.position not in ("learned", "sinusoidal"):
        del d["max_positions"], d["position_offset"], d["positions_from_padding"]
    if config.form == "encoder" and config.encoder_head != "mlm":
        for key in ("tie_embeddings", "lm_head_bias", "lm_head_transform", "scale_tied_logits"):
            del d[key]
    return d


def _export_architecture(model: TransformerModel, family: Family) -> str:
    """The HF class to write: ``model.hf_architecture`` if the config still has its heads,
    else the first class whose head settings the config has."""
    config = model.config

    def fits(name: str) -> bool:
        return all(getattr(config, k) == v for k, v in family.architectures[name].heads.items())

    name = getattr(model, "hf_architecture", None)
    if name in family.architectures and fits(name):
        return name
    for name in family.architectures:
        if fits(name):
            return name
    raise TriformError(f"no HuggingFace {family.model_type} class has this model's heads")


# =========================================================================================
# The engine: state dicts
# =========================================================================================
def _resolve(rules: list[_Compiled], name: str) -> _Match:
    """The HF names of triform tensor ``name`` (first matching rule)."""
    for compiled in rules:
        m = compiled.ours.fullmatch(name)
        if m is None:
            continue
        index, leaf = m.groupdict().get("i"), m["leaf"]
        rule = compiled.rule
        theirs = [_hf_name(t, index, leaf) for t in rule.theirs]
        return _Match(theirs, [_hf_name(a, index, leaf) for a in rule.aliases], rule.kind, leaf)
    raise TriformError(f"triform parameter {name} has no HuggingFace equivalent")


def _hf_name(name: str, index: str | None, leaf: str | None) -> str:
    name = name if index is None else name.replace("{i}", index)
    return f"{name}.{leaf}" if leaf else name


def _to_hf_parts(match: _Match, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Triform tensor -> the HF tensors of ``match.theirs``, in order."""
    if match.kind == "conv" and match.leaf == "weight":
        return [tensor.t()]  # (out, in) -> Conv1D (in, out)
    if match.kind == "row":
        return [tensor.reshape(1, -1)]  # (n,) -> (1, n)
    return list(tensor.chunk(len(match.theirs), dim=0))


def _from_hf_parts(match: _Match, parts: list[torch.Tensor]) -> torch.Tensor:
    """The HF tensors of ``match.theirs`` -> one triform tensor."""
    if match.kind == "conv" and match.leaf == "weight":
        return parts[0].t()
    if match.kind == "row":
        return parts[0].reshape(-1)
    return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]


_LEGACY = ((".LayerNorm.gamma", ".LayerNorm.weight"), (".LayerNorm.beta", ".LayerNorm.bias"))


def _canonical(family: Family, state: Mapping[str, torch.Tensor]) -> StateDict:
    """Checkpoint keys as the rules spell them: body keys under the family prefix (base-model
    checkpoints leave it out) and TF-era ``LayerNorm.gamma/beta`` as ``weight/bias``."""
    out = {}
    for key, value in state.items():
        for old, new in _LEGACY:
            key = key[: -len(old)] + new if key.endswith(old) else key
        prefixed = f"{family.prefix}.{key}"
        if family.prefix and not family.knows(key) and family.knows(prefixed):
            key = prefixed
        out[key] = value
    return out


def _tied_groups(model: TransformerModel) -> list[tuple[torch.Tensor, list[str]]]:
    """Every distinct tensor of ``model`` with all its names (tied weights have several)."""
    groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), (tensor, []))[1].append(name)
    return list(groups.values())


def _untie(family: Family, model: TransformerModel, state: StateDict) -> TransformerModel:
    """``model`` (on meta) rebuilt with an untied LM head if the checkpoint holds different
    values for the head and the embedding (T5 v1.1, any tie_word_embeddings=false model)."""
    rules = family.rules(model.config)
    for _, names in _tied_groups(model):
        if "lm_head.decoder.weight" not in names or len(names) < 2:
            continue
        values = [state[n] for name in names for n in _resolve(rules, name).names if n in state]
        if any(not torch.equal(values[0], v) for v in values[1:]):
            return build_model(model.config.replace(tie_embeddings=False), device="meta")
    return model


def _fill(family: Family, model: TransformerModel, state: StateDict, copy: bool) -> set[str]:
    """Give every tensor of ``model`` (built on the meta device, so never initialised) its
    checkpoint value, keeping tied tensors tied. Returns the HF keys used; raises on a missing
    key or a shape mismatch. ``copy``: never share memory with ``state``."""
    rules = family.rules(model.config)
    used: set[str] = set()
    for tensor, names in _tied_groups(model):
        match = _resolve(rules, names[0])
        keys = _present(match, state, names[0])
        parts = [state[k].detach() for k in keys]
        for key, part, want in zip(keys, parts, _to_hf_parts(match, tensor), strict=True):
            if part.shape != want.shape:
                raise TriformError(
                    f"checkpoint tensor {key} has shape {tuple(part.shape)}, "
                    f"the config implies {tuple(want.shape)}"
                )
        value = _from_hf_parts(match, parts).to(device="cpu", dtype=torch.float32)
        value = value.clone(memory_format=torch.contiguous_format) if copy else value.contiguous()
        if isinstance(tensor, torch.nn.Parameter):
            value = torch.nn.Parameter(value, requires_grad=tensor.requires_grad)
        for name in names:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, value)
            used.update(k for k in _resolve(rules, name).names if k in state)
    return used


def _present(match: _Match, state: StateDict, ours: str) -> list[str]:
    """The HF keys to read: all of ``match.theirs``, or else one alias."""
    if all(k in state for k in match.theirs):
        return match.theirs
    for alias in match.aliases:
        if alias in state:
            return [alias]
    missing = next(k for k in match.theirs if k not in state)
    raise TriformError(f"checkpoint lacks {missing} (needed for triform {ours})")


def _check_unexpected(
    family: Family, config: ModelConfig, state: StateDict, used: set[str]
) -> None:
    """Raise naming the first checkpoint key no rule of the family knows."""
    layers = max(config.num_layers, config.decoder_layers)
    unexpected = [
        key
        for key in state
        if key not in used and not family.ignores(key) and not family.knows(key, layers)
    ]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise TriformError(f"unexpected key {unexpected[0]} in the checkpoint{more}")


def _build(
    hf_config: Mapping[str, Any],
    architecture: str,
    state: Mapping[str, torch.Tensor],
    copy: bool = False,
) -> TransformerModel:
    """A triform model holding checkpoint ``state`` of HF class ``architecture``."""
    family = _family(hf_config.get("model_type"))
    config = config_from_hf(hf_config, architecture)
    state = _canonical(family, state)
    model = build_model(config, device="meta")
    if config.tie_embeddings:
        model = _untie(family, model, state)
    used = _fill(family, model, state, copy)
    _check_unexpected(family, model.config, state, used)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a module with a tensor that is not in the state dict (not an HF family)
        raise TriformError(f"triform tensor {left[0]} has no HuggingFace equivalent")
    model.hf_architecture = architecture
    return model


def _export_state(model: TransformerModel) -> tuple[dict[str, Any], StateDict]:
    """The HF config dict and HF state dict (names of the HF class) of a triform model."""
    family = _family_of(model.config)
    architecture = _export_architecture(model, family)
    hf_config = config_to_hf(model.config, architecture)
    rules = family.rules(model.config)
    state: StateDict = {}
    for tensor, names in _tied_groups(model):  # tied copies are written once, as HF does
        match = _resolve(rules, names[0])
        state.update(zip(match.theirs, _to_hf_parts(match, tensor.detach()), strict=True))
    if family.prefix and not family.architectures[architecture].prefixed:
        start = len(family.prefix) + 1
        state = {k[start:] if k.startswith(family.prefix + ".") else k: v for k, v in state.items()}
    return hf_config, state


# =========================================================================================
# Public API
# =========================================================================================
def from_hf(hf_model: torch.nn.Module) -> TransformerModel:
    """A triform model with the weights of a ``transformers`` model object.

    Supported classes: see :data:`FAMILIES`. The result is on the HF model's device, in its
    train/eval mode, and remembers the class as ``model.hf_architecture``.
    """
    config = getattr(hf_model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TriformError(f"{type(hf_model).__name__} is not a transformers model")
    state = hf_model.state_dict()
    model = _build(config.to_dict(), type(hf_model).__name__, state, copy=True)
    device = next(hf_model.parameters()).device
    return model.to(device).train(hf_model.training)


def to_hf(model: TransformerModel) -> torch.nn.Module:
    """The ``transformers`` model (class ``model.hf_architecture`` or inferred from the heads)
    with the weights of a triform model. Needs transformers installed."""
    try:
        import transformers
    except ImportError:
        raise TriformError("hf.to_hf needs the transformers package") from None
    hf_config, state = _export_state(model)
    architecture = hf_config["architectures"][0]
    config = transformers.AutoConfig.for_model(**hf_config)
    hf_model = getattr(transformers, architecture)(config)
    if not model.config.tie_embeddings:  # transformers 5 ties T5's head regardless
        head, embedding = hf_model.get_output_embeddings(), hf_model.get_input_embeddings()
        if head is not None and head.weight is embedding.weight:
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
    result = hf_model.load_state_dict(state, strict=False)
    loaded = {id(t) for k, t in hf_model.state_dict(keep_vars=True).items() if k in state}
    everything = hf_model.state_dict(keep_vars=True)
    untouched = [k for k in result.missing_keys if id(everything[k]) not in loaded]
    if result.unexpected_keys or untouched:
        key = (result.unexpected_keys or untouched)[0]
        raise TriformError(f"{architecture} does not match the exported weights at {key}")
    return hf_model.to(model.device).train(model.training)


def save(model: TransformerModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` that ``transformers``' ``from_pretrained``
    loads as ``model.hf_architecture`` (or the class the heads imply). No transformers needed.
    """
    from safetensors.torch import save_file

    hf_config, state = _export_state(model)
    dtype = next(model.parameters()).dtype
    hf_config["dtype"] = str(dtype).removeprefix("torch.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu().clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    text = json.dumps(hf_config, indent=2, sort_keys=True)
    (directory / "config.json").write_text(text + "\n", encoding="utf-8")
    return directory


def load(directory: str | Path, architecture: str | None = None) -> TransformerModel:
    """A triform model (eval mode, float32) from an HF checkpoint folder: ``config.json`` plus
    ``model.safetensors`` (or sharded ``model.safetensors.index.json``; else
    ``pytorch_model.bin``, read with ``weights_only=True``). No transformers needed.

    ``architecture`` overrides the class named in config.json (e.g. "BertModel" to load only
    the body of a ``BertForPreTraining`` checkpoint).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TriformError(f"no such checkpoint folder: {directory}")
    hf_config = read_config(directory)
    family = _family(hf_config.get("model_type"))
    if architecture is None:
        # without a class name, load the body (what AutoModel does); base models come last
        architecture = (hf_config.get("architectures") or list(family.architectures)[-1:])[0]
    model = _build(hf_config, architecture, read_weights(directory))
    return model.eval()


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of an HF checkpoint folder."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise TriformError(f"{directory} has no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TriformError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(config, dict):
        raise TriformError(f"{path}: expected a JSON object")
    return config


def read_weights(directory: str | Path) -> StateDict:
    """All tensors of an HF checkpoint folder (safetensors preferred; pickles are read with
    ``torch.load(weights_only=True)``, which loads tensors and never code)."""
    directory = Path(directory)
    for index_name, reader in (
        ("model.safetensors.index.json", _read_safetensors),
        ("pytorch_model.bin.index.json", _read_bin),
    ):
        single = directory / index_name.removesuffix(".index.json")
        if single.is_file():
            return reader(single)
        index = directory / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as err:
                raise TriformError(f"{index}: malformed index: {err}") from None
            state: StateDict = {}
            for shard in shards:
                state.update(reader(directory / shard))
            return state
    raise TriformError(f"{directory} has no model.safetensors or pytorch_model.bin")


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise TriformError(f"{path}: unreadable safetensors file: {err}") from None


def _read_bin(path: Path) -> StateDict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a bad or unsafe pickle
        reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise TriformError(f"{path}: unreadable weights file: {reason}") from None
    if not isinstance(state, dict):
        raise TriformError(f"{path}: expected a dict of tensors")
    return state
