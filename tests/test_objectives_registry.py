"""The objective registry: every name builds from a config dict; bad keys are one-line errors."""

from __future__ import annotations

import pytest
import torch

from triform.errors import ConfigError
from triform.objectives import (
    OBJECTIVES,
    Objective,
    SampleDraws,
    build_objective,
    context_from_tokenizer,
)

CONTEXT = {
    "vocab_size": 1200,
    "pad_id": 0,
    "mask_id": 4,
    "eos_id": 1,
    "special_ids": [0, 1, 2, 3, 4],
    "sentinel_ids": [1199 - i for i in range(100)],
    "cls_id": 2,  # context keys an objective does not use are ignored
}


def test_registry_names():
    assert set(OBJECTIVES) == {
        "causal-lm",
        "mlm",
        "mlm-nsp",
        "mlm-sop",
        "span-corruption",
        "denoising",
        "rtd",
        "seq2seq",
        "span-mlm",
        "distill",
    }
    for name, cls in OBJECTIVES.items():
        assert cls.name == name
        assert issubclass(cls, Objective)


@pytest.fixture(scope="module")
def required(tmp_path_factory, save_model_folder) -> dict[str, dict]:
    """The keys some objectives cannot do without: distillation's teacher (a tiny random
    BERT over the context's 1,200 ids)."""
    from tokenizers import Tokenizer, models

    import triform

    teacher = triform.build_model(
        triform.presets.get(
            "bert-tiny", vocab_size=1200, hidden_size=16, num_layers=2, num_heads=2, ffn_size=32
        )
    )
    vocab = {f"t{i}": i for i in range(1200)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    folder = save_model_folder(tmp_path_factory.mktemp("teacher"), teacher, tokenizer)
    return {"distill": {"teacher": folder}}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_builds_and_rejects_unknown_keys(name, required):
    options = {"name": name, **required.get(name, {})}
    objective = build_objective(options, **CONTEXT)
    assert isinstance(objective, OBJECTIVES[name])
    with pytest.raises(ConfigError, match=r"^unknown key objective\.bogus$"):
        build_objective({**options, "bogus": 1}, **CONTEXT)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"name": "mlm", "mask_prob": "lots"}, "objective.mask_prob"),
        ({"name": "mlm", "masking": "sometimes"}, "objective.masking"),
        ({"name": "span-corruption", "mean_span_length": 0.5}, "objective.mean_span_length"),
        ({"name": "denoising", "text_infilling": 2}, "objective.text_infilling"),
        ({"name": "rtd", "discriminator_weight": -1.0}, "objective.discriminator_weight"),
        ({"name": "seq2seq", "max_source_length": 1}, "objective.max_source_length"),
        ({"name": "mlm", "special_ids": [1, "x"]}, "objective.special_ids"),
        ({"name": "lm"}, "objective.name"),
        ({}, "objective.name"),
    ],
)
def test_bad_values_name_the_key(options, key):
    with pytest.raises(ConfigError) as error:
        build_objective(options, **CONTEXT)
    message = str(error.value)
    assert key in message and "\n" not in message


def test_user_keys_override_the_context():
    mlm = build_objective({"name": "mlm", "mask_id": 3}, **CONTEXT)
    assert mlm.config.mask_id == 3 and mlm.config.vocab_size == 1200


def test_context_from_a_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["Hello there. How are you? Fine!"] * 20,
        trainers.WordPieceTrainer(
            vocab_size=80, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        ),
    )
    context = context_from_tokenizer(tok)
    assert context["pad_id"] == 0 and context["mask_id"] == 4 and context["eos_id"] == 3
    assert context["special_ids"] == [0, 1, 2, 3, 4]
    assert {tok.id_to_token(i) for i in context["sentence_end_ids"]} == {".", "?", "!"}
    mlm = build_objective({"name": "mlm", "whole_word": True}, **context)
    ids = torch.tensor([tok.encode("Hello there. How are you?").ids])
    out = mlm({"input_ids": ids}, SampleDraws(0, 1))
    assert out["input_ids"].shape == ids.shape


@pytest.mark.parametrize("name", ["mlm", "rtd", "span-corruption", "denoising"])
def test_short_and_empty_rows(name):
    """Rows of 0, 1 and 2 real tokens and a batch of one token per row do not break."""
    options = {"name": name}
    if name == "denoising":
        options.update(token_masking=0.2, token_deletion=0.2, document_rotation=1.0)
    objective = build_objective(options, **CONTEXT)
    ids = torch.tensor([[7, 8, 9, 10], [7, 0, 0, 0], [7, 8, 0, 0], [0, 0, 0, 0]])
    mask = (ids != 0).long()
    draws = SampleDraws(0, 4)
    out = objective({"input_ids": ids, "attention_mask": mask}, draws)
    assert out["input_ids"].size(0) == 4
    out = objective({"input_ids": ids[:, :1], "attention_mask": mask[:, :1]}, draws)
    assert out["input_ids"].size(0) == 4
