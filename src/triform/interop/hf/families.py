"""The supported HuggingFace families (``model_type``): config codecs and fields, what the field
tables cannot say (``adjust_in`` / ``adjust_out``), the name tables and :data:`FAMILIES`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from triform.config import ModelConfig
from triform.errors import TriformError
from triform.interop.hf.rules import (
    Arch,
    Codec,
    Family,
    Field,
    Rule,
    conv,
    fused,
    row,
    same,
    stack,
)

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
