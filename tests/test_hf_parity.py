"""Exact parity with transformers: a tiny random HF model of every family, converted with
``hf.from_hf``, gives the same hidden states (every layer) and logits on padded batches, and
triform's KV cache decodes token by token to the same logits.

All positions are compared, padded ones included: with right padding every query still sees
at least one real key, so both implementations compute padded positions deterministically.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from hf_cases import (  # noqa: E402
    BASE_CASES,
    CASES,
    assert_outputs_match,
    assert_same,
    batch,
    hf_outputs,
    make_hf,
    triform_outputs,
)
from triform.errors import TriformError  # noqa: E402
from triform.interop import hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DECODING = [name for name in CASES if CASES[name].cls.endswith(("LMHeadModel", "Generation"))]


@pytest.mark.parametrize("name", list(CASES))
def test_head_model_matches_transformers(name: str) -> None:
    case = CASES[name]
    reference = make_hf(case)
    model = hf.from_hf(reference)
    assert model.hf_architecture == case.cls
    assert not model.training
    inputs = batch(reference.config)
    assert_outputs_match(triform_outputs(model, inputs), hf_outputs(reference, inputs))


@pytest.mark.parametrize("name", list(BASE_CASES))
def test_base_model_matches_transformers(name: str) -> None:
    case = BASE_CASES[name]
    reference = make_hf(case)
    model = hf.from_hf(reference)
    inputs = batch(reference.config)
    ref = hf_outputs(reference, inputs)
    ref.pop("logits", None)  # base models have none; triform's tied head is extra
    assert_outputs_match(triform_outputs(model, inputs), ref)


def test_heads_follow_the_class() -> None:
    pretraining = hf.from_hf(make_hf(CASES["bert"])).config
    masked_lm = hf.from_hf(make_hf(CASES["bert-mlm"])).config
    body = hf.from_hf(make_hf(BASE_CASES["bert"])).config
    assert (pretraining.encoder_head, pretraining.pair_head, pretraining.pooler) == (
        "mlm",
        "nsp",
        True,
    )
    assert (masked_lm.encoder_head, masked_lm.pair_head, masked_lm.pooler) == ("mlm", "none", False)
    assert (body.encoder_head, body.pair_head, body.pooler) == ("none", "none", True)
    discriminator = hf.from_hf(make_hf(CASES["electra-discriminator"])).config
    assert discriminator.encoder_head == "rtd"


def test_t5_variants_map_to_the_right_flags() -> None:
    v10 = hf.from_hf(make_hf(CASES["t5-v1.0"])).config
    v11 = hf.from_hf(make_hf(CASES["t5-v1.1"])).config
    assert (v10.activation, v10.tie_embeddings, v10.scale_tied_logits) == ("relu", True, True)
    assert (v11.activation, v11.tie_embeddings, v11.scale_tied_logits) == (
        "gated-gelu_tanh",
        False,
        False,
    )


def _decode_step_by_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits from feeding the (decoder) tokens one at a time through triform's KV cache."""
    seq2seq = model.config.form == "encoder-decoder"
    tokens = inputs["decoder_input_ids"] if seq2seq else inputs["input_ids"]
    mask = inputs["decoder_attention_mask"] if seq2seq else inputs["attention_mask"]
    cache, encoded, steps = None, None, []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            if seq2seq:
                out = model(
                    input_ids=inputs["input_ids"] if encoded is None else None,
                    attention_mask=inputs["attention_mask"],
                    encoder_hidden_state=encoded,
                    decoder_input_ids=tokens[:, t : t + 1],
                    decoder_attention_mask=mask[:, : t + 1],
                    past_key_values=cache,
                    use_cache=True,
                )
                encoded = out.encoder_last_hidden_state
            else:
                out = model(
                    tokens[:, t : t + 1],
                    attention_mask=mask[:, : t + 1],
                    past_key_values=cache,
                    use_cache=True,
                )
            cache = out.past_key_values
            steps.append(out.logits)  # (B, 1, V)
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("name", DECODING)
def test_kv_cache_decoding_matches_full_forward_and_transformers(name: str) -> None:
    reference = make_hf(CASES[name])
    model = hf.from_hf(reference)
    inputs = batch(reference.config)
    incremental = _decode_step_by_step(model, inputs)
    with torch.no_grad():
        full = model(**inputs).logits
        theirs = reference(**inputs).logits
    assert_same(incremental, full, "incremental vs full")
    assert_same(incremental, theirs, "incremental vs transformers")


def test_from_hf_keeps_device_and_mode_and_rejects_other_objects() -> None:
    reference = make_hf(CASES["gpt2"]).train()
    assert hf.from_hf(reference).training
    with pytest.raises(TriformError, match="not a transformers model"):
        hf.from_hf(torch.nn.Linear(2, 2))
