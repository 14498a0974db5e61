"""NSP / SOP combined with MLM: labels carried through, masking as MLM, the combined loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from triform.errors import TriformError
from triform.models.outputs import EncoderOutput
from triform.objectives import (
    NextSentencePrediction,
    SampleDraws,
    SentenceOrderPrediction,
    pretraining_loss,
)

V, B, L = 1000, 512, 128
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = [PAD, UNK, CLS, SEP, MASK]


pytestmark = pytest.mark.usefixtures("one_thread")


def pairs(seed: int = 0) -> dict[str, torch.Tensor]:
    """What a sentence-pair reader gives: ``[CLS] A [SEP] B [SEP] [PAD]...``, balanced labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, L), generator=g)
    first = torch.randint(10, 60, (B,), generator=g)
    total = first + torch.randint(10, 60, (B,), generator=g)
    position = torch.arange(L)
    ids[:, 0] = CLS
    ids[position == first.unsqueeze(1)] = SEP
    ids[position == total.unsqueeze(1)] = SEP
    mask = position <= total.unsqueeze(1)
    ids[~mask] = PAD
    token_types = ((position > first.unsqueeze(1)) & mask).long()
    labels = torch.randperm(B, generator=g) % 2
    return {
        "input_ids": ids,
        "attention_mask": mask.long(),
        "token_type_ids": token_types,
        "pair_labels": labels,
    }


@pytest.mark.parametrize("cls", [NextSentencePrediction, SentenceOrderPrediction])
def test_pair_labels_are_carried_with_the_mlm_batch(cls):
    objective = cls.from_dict(
        {"name": cls.name}, vocab_size=V, mask_id=MASK, pad_id=PAD, special_ids=SPECIAL
    )
    batch = pairs()
    out = objective(batch, SampleDraws(1, B))
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "labels", "pair_labels"}
    assert torch.equal(out["pair_labels"], batch["pair_labels"])
    assert out["pair_labels"].float().mean().item() == 0.5  # balanced as the reader made it
    assert torch.equal(out["token_type_ids"], batch["token_type_ids"])
    selected = out["labels"] != -100
    assert not selected[batch["input_ids"] < 5].any()  # [CLS] [SEP] [PAD] never selected
    candidates = batch["attention_mask"].bool() & (batch["input_ids"] >= 5)
    assert selected.sum().item() / candidates.sum().item() == pytest.approx(0.15, abs=0.007)
    # both segments are masked
    assert (
        selected[batch["token_type_ids"] == 0].any()
        and selected[batch["token_type_ids"] == 1].any()
    )
    # what the loss needs is all there
    out = {key: value[:8] for key, value in out.items()}
    logits = torch.randn(8, L, V)
    pair_logits = torch.randn(8, 2)
    loss, parts = objective.loss(EncoderOutput(torch.zeros(8, L, 4), logits, pair_logits), out)
    expected = F.cross_entropy(logits.view(-1, V), out["labels"].view(-1)) + F.cross_entropy(
        pair_logits, out["pair_labels"]
    )
    assert torch.allclose(loss, expected, atol=1e-5)
    assert set(parts) == {"mlm_loss", "pair_loss", "pair_accuracy"}


def test_pair_objectives_need_pair_batches():
    objective = NextSentencePrediction.from_dict({}, vocab_size=V, mask_id=MASK, pad_id=PAD)
    batch = pairs()
    del batch["pair_labels"]
    with pytest.raises(TriformError, match="pair_labels"):
        objective(batch, SampleDraws(0, B))


def test_pretraining_loss_parts():
    logits = torch.zeros(2, 3, 5)
    labels = torch.tensor([[1, -100, -100], [-100, 2, -100]])
    pair_logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    loss, parts = pretraining_loss(logits, labels, pair_logits, torch.tensor([0, 0]))
    mlm = torch.log(torch.tensor(5.0))
    pair = F.cross_entropy(pair_logits, torch.tensor([0, 0]))
    assert torch.allclose(loss, mlm + pair)
    assert parts["pair_accuracy"].item() == 0.5
