"""Tiny randomly initialised transformers models of every family, random padded inputs and
the comparison helpers shared by test_hf_parity.py and test_hf_checkpoint.py.

Everything here runs on CPU in float32 in seconds: 2 layers, hidden 32, vocabulary 99.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

VOCAB, BATCH, SRC_LEN, TGT_LEN = 99, 3, 9, 6


_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=40,
)
_GPT = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=40)
_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=VOCAB)
_BART = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    vocab_size=VOCAB,
    max_position_embeddings=40,
)


@dataclass(frozen=True)
class Case:
    """One HF class at tiny size. ``untie``: give it a separate LM head after construction
    (T5 v1.1; transformers 5 ties T5's head at construction whatever the config says)."""

    cls: str
    config_cls: str
    config: dict[str, Any] = field(default_factory=dict)
    attn: str = "sdpa"
    untie: bool = False


CASES: dict[str, Case] = {
    "bert": Case("BertForPreTraining", "BertConfig", _ENCODER, attn="eager"),
    "bert-mlm": Case("BertForMaskedLM", "BertConfig", _ENCODER),
    "roberta": Case(
        "RobertaForMaskedLM",
        "RobertaConfig",
        {**_ENCODER, "max_position_embeddings": 42, "type_vocab_size": 1},
    ),
    "albert": Case(
        "AlbertForPreTraining", "AlbertConfig", {**_ENCODER, "embedding_size": 16}, "eager"
    ),
    "albert-mlm": Case("AlbertForMaskedLM", "AlbertConfig", {**_ENCODER, "embedding_size": 16}),
    "electra-discriminator": Case(
        "ElectraForPreTraining", "ElectraConfig", {**_ENCODER, "embedding_size": 16}
    ),
    "electra-generator": Case(
        "ElectraForMaskedLM", "ElectraConfig", {**_ENCODER, "embedding_size": 16}, "eager"
    ),
    "gpt": Case("OpenAIGPTLMHeadModel", "OpenAIGPTConfig", _GPT, attn="eager"),
    "gpt2": Case("GPT2LMHeadModel", "GPT2Config", {**_GPT, "bos_token_id": 0, "eos_token_id": 0}),
    "gpt2-eager": Case(
        "GPT2LMHeadModel", "GPT2Config", {**_GPT, "bos_token_id": 0, "eos_token_id": 0}, "eager"
    ),
    "t5-v1.0": Case("T5ForConditionalGeneration", "T5Config", _T5),
    "t5-v1.1": Case(
        "T5ForConditionalGeneration",
        "T5Config",
        {**_T5, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
        attn="eager",
        untie=True,
    ),
    "bart": Case("BartForConditionalGeneration", "BartConfig", _BART, attn="eager"),
    "bart-sdpa": Case("BartForConditionalGeneration", "BartConfig", _BART),
}
# Base models (no heads): the body's hidden states.
BASE_CASES: dict[str, Case] = {
    "bert": Case("BertModel", "BertConfig", _ENCODER),
    "roberta": Case("RobertaModel", "RobertaConfig", {**_ENCODER, "max_position_embeddings": 42}),
    "albert": Case("AlbertModel", "AlbertConfig", {**_ENCODER, "embedding_size": 16}),
    "electra": Case("ElectraModel", "ElectraConfig", {**_ENCODER, "embedding_size": 16}),
    "gpt": Case("OpenAIGPTModel", "OpenAIGPTConfig", _GPT, attn="eager"),
    "gpt2": Case("GPT2Model", "GPT2Config", {**_GPT, "bos_token_id": 0, "eos_token_id": 0}),
    "t5": Case("T5Model", "T5Config", _T5),
    "bart": Case("BartModel", "BartConfig", _BART),
}


def make_hf(case: Case, seed: int = 0) -> torch.nn.Module:
    """The HF model of ``case`` in eval mode, every parameter perturbed so that biases and
    norm weights are not their trivial initial zeros and ones."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, case.config_cls)(**case.config, attn_implementation=case.attn)
    model = getattr(transformers, case.cls)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if case.untie:
            head = model.get_output_embeddings()
            head.weight = torch.nn.Parameter(torch.randn_like(head.weight))
    return model


def batch(config: Any, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random right-padded inputs (lengths SRC_LEN, 6, 3) for an HF config: input ids (no pad id
    among real tokens, pad id at padded positions), mask, segments and a padded target."""
    g = torch.Generator().manual_seed(seed)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    lengths = torch.tensor([SRC_LEN, 6, 3])
    mask = (torch.arange(SRC_LEN)[None] < lengths[:, None]).long()
    ids = torch.randint(3, VOCAB, (BATCH, SRC_LEN), generator=g)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    target = torch.randint(3, VOCAB, (BATCH, TGT_LEN), generator=g)
    target_mask = torch.ones(BATCH, TGT_LEN, dtype=torch.long)
    target_mask[2, 4:] = 0
    out = dict(input_ids=ids, attention_mask=mask)
    if getattr(config, "is_encoder_decoder", False):
        out.update(decoder_input_ids=target, decoder_attention_mask=target_mask)
    elif getattr(config, "type_vocab_size", 0) > 1:
        out["token_type_ids"] = torch.randint(
            0, config.type_vocab_size, (BATCH, SRC_LEN), generator=g
        )
    return out


def hf_outputs(hf_model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Named outputs of an HF model: hidden states and whatever logits its class has."""
    with torch.no_grad():
        r = hf_model(**inputs, output_hidden_states=True)
    out: dict[str, Any] = {}
    if getattr(r, "encoder_hidden_states", None) is not None:
        out["encoder_hidden_states"] = list(r.encoder_hidden_states)
        out["decoder_hidden_states"] = list(r.decoder_hidden_states)
    else:
        out["hidden_states"] = list(r.hidden_states)
    for ours, theirs in (
        ("logits", "prediction_logits"),
        ("logits", "logits"),
        ("pair_logits", "seq_relationship_logits"),
        ("pair_logits", "sop_logits"),
        ("pooled_output", "pooler_output"),
    ):
        if getattr(r, theirs, None) is not None and ours not in out:
            out[ours] = r[theirs]
    return out


def triform_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The same named outputs from a triform model."""
    with torch.no_grad():
        o = model(**inputs, output_hidden_states=True)
    out = {k: getattr(o, k, None) for k in ("logits", "pair_logits", "pooled_output")}
    if model.config.form == "encoder-decoder":
        out.update(
            encoder_hidden_states=o.encoder_hidden_states,
            decoder_hidden_states=o.decoder_hidden_states,
        )
    else:
        out["hidden_states"] = o.hidden_states
    return out


def max_relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def assert_same(ours: torch.Tensor, ref: torch.Tensor, what: str = "") -> float:
    """Equal within 1e-5 relative (atol scaled by the reference's magnitude); returns the
    max relative error."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    scale = ref.abs().max().item()
    torch.testing.assert_close(
        ours, ref, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}"
    )
    return max_relative_error(ours, ref)


def assert_outputs_match(ours: dict[str, Any], ref: dict[str, Any]) -> float:
    """Every output the reference has (all hidden states, logits, ...) matches; returns the
    largest relative error seen."""
    worst = 0.0
    for name, value in ref.items():
        mine = ours.get(name)
        assert mine is not None, f"triform has no {name}"
        pairs = zip(mine, value, strict=True) if isinstance(value, list) else [(mine, value)]
        for i, (a, b) in enumerate(pairs):
            worst = max(
                worst, assert_same(a, b, f"{name}[{i}]" if isinstance(value, list) else name)
            )
    return worst
