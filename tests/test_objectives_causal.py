"""Causal LM: the shift by one, packed documents with separators."""

from __future__ import annotations

import torch

from triform.models.outputs import DecoderOutput
from triform.objectives import CausalLM, pack_documents

EOS = 0


def test_inputs_and_targets_are_shifted_by_one():
    window = torch.arange(2 * 9).view(2, 9)
    out = CausalLM.from_dict({"name": "causal-lm"})({"input_ids": window})
    assert torch.equal(out["input_ids"], window[:, :-1])
    assert torch.equal(out["labels"], window[:, 1:])
    assert out["attention_mask"].shape == (2, 8) and out["attention_mask"].all()
    assert CausalLM.from_dict({}).source_length(8) == 9


def test_padding_in_a_short_last_window_is_not_a_target():
    window = torch.tensor([[5, 6, 7, EOS, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    out = CausalLM.from_dict({})({"input_ids": window, "attention_mask": mask}, None)
    assert out["labels"].tolist() == [[6, 7, EOS, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0]]


def test_documents_are_packed_with_separators_and_every_token_is_a_target_once():
    documents = [torch.tensor([1, 2, 3]), torch.tensor([4, 5]), torch.tensor([6, 7, 8, 9])]
    windows = pack_documents(documents, EOS, seq_len=4)
    stream = [1, 2, 3, EOS, 4, 5, EOS, 6, 7, 8, 9, EOS]
    assert windows.tolist() == [stream[0:5], stream[4:9]]
    out = CausalLM.from_dict({})({"input_ids": windows}, None)
    assert out["labels"].reshape(-1).tolist() == stream[1:9]  # each target exactly once
    padded = pack_documents(documents, EOS, seq_len=4, drop_last=False)
    assert padded.tolist()[-1] == stream[8:12] + [EOS]
    assert pack_documents([], EOS, 4).shape == (0, 5)


def test_loss_is_the_mean_token_cross_entropy():
    logits = torch.zeros(1, 5, 10)
    out = CausalLM.from_dict({})({"input_ids": torch.arange(6).view(1, 6)}, None)
    loss, parts = CausalLM.from_dict({}).loss(DecoderOutput(logits, logits), out)
    assert torch.allclose(loss, torch.log(torch.tensor(10.0)))
    assert parts == {}
