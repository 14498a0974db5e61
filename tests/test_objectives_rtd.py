"""ELECTRA replaced-token detection: masking, sampling, labels, loss weight, shared
embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from triform import presets
from triform.models import EncoderModel
from triform.objectives import (
    ReplacedTokenDetection,
    SampleDraws,
    electra_loss,
    generator_config,
    sample_replacements,
    share_embeddings,
)

V, B, L = 1000, 512, 64
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = [PAD, UNK, CLS, SEP, MASK]


pytestmark = pytest.mark.usefixtures("one_thread")


def batch_of(size: int = B, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (size, L), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    mask = torch.ones_like(ids)
    mask[: size // 4, L // 2 :] = 0  # a quarter of the rows are half padding
    ids[mask == 0] = PAD
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def objective(**options) -> ReplacedTokenDetection:
    return ReplacedTokenDetection.from_dict(
        options, vocab_size=V, mask_id=MASK, pad_id=PAD, special_ids=SPECIAL
    )


def test_generator_batch_uses_electra_masking():
    batch = batch_of()
    out = objective()(batch, SampleDraws(1, B))
    assert torch.equal(out["original_ids"], batch["input_ids"])
    assert torch.equal(out["token_type_ids"], batch["token_type_ids"])
    selected = out["labels"] != -100
    candidates = (batch["attention_mask"] == 1) & (batch["input_ids"] >= 5)
    assert selected.sum().item() / candidates.sum().item() == pytest.approx(0.15, abs=0.008)
    masked = (out["input_ids"][selected] == MASK).double().mean().item()
    assert masked == pytest.approx(0.85, abs=0.02)
    unchanged = out["input_ids"][selected] == batch["input_ids"][selected]
    assert ((out["input_ids"][selected] == MASK) | unchanged).all()  # no random tokens


def test_replaced_labels_are_exactly_where_the_sample_differs():
    batch = objective()(batch_of(), SampleDraws(2, B))
    original = batch["original_ids"]
    # the generator puts half its mass on the original token and half on token 7
    logits = torch.full((B, L, V), -1e4)
    logits.scatter_(2, original.unsqueeze(2), 0.0)
    logits[:, :, 7] = 0.0
    logits.requires_grad_(True)
    out = sample_replacements(logits, batch, SampleDraws(3, B))
    selected = batch["labels"] != -100
    ids = out["input_ids"]
    assert not ids.requires_grad
    assert torch.equal(ids[~selected], original[~selected])  # only selected positions change
    assert ((ids[selected] == original[selected]) | (ids[selected] == 7)).all()
    real = batch["attention_mask"] == 1
    assert torch.equal(out["labels"][real], (ids != original).long()[real])
    assert (out["labels"][~real] == -100).all()
    replaced = (ids[selected] != original[selected]).double().mean().item()
    assert replaced == pytest.approx(0.5, abs=0.03)
    again = sample_replacements(logits, batch, SampleDraws(3, B))
    assert torch.equal(again["input_ids"], ids)


def test_sampling_follows_the_generator_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rows = 20_000
    batch = {
        "original_ids": torch.zeros(rows, 1, dtype=torch.long),
        "labels": torch.zeros(rows, 1, dtype=torch.long),
        "attention_mask": torch.ones(rows, 1, dtype=torch.long),
    }
    logits = probs.log().expand(rows, 1, 4)
    out = sample_replacements(logits, batch, SampleDraws(0, rows))
    frequency = torch.bincount(out["input_ids"].view(-1), minlength=4).double() / rows
    assert torch.allclose(frequency, probs.double(), atol=0.012)
    assert torch.equal(out["labels"].view(-1), (out["input_ids"].view(-1) != 0).long())


def test_loss_weights_the_discriminator_by_50():
    g = torch.Generator().manual_seed(5)
    generator_logits = torch.randn(4, 8, 30, generator=g)
    mlm_labels = torch.full((4, 8), -100)
    mlm_labels[:, 2] = torch.tensor([1, 2, 3, 4])
    discriminator_logits = torch.randn(4, 8, generator=g)
    rtd_labels = torch.randint(0, 2, (4, 8), generator=g)
    rtd_labels[0, 6:] = -100
    loss, parts = electra_loss(generator_logits, mlm_labels, discriminator_logits, rtd_labels)
    mlm = F.cross_entropy(generator_logits.view(-1, 30), mlm_labels.view(-1))
    real = rtd_labels != -100
    bce = F.binary_cross_entropy_with_logits(discriminator_logits[real], rtd_labels[real].float())
    assert torch.allclose(loss, mlm + 50.0 * bce)
    assert torch.allclose(parts["generator_loss"], mlm)
    assert torch.allclose(parts["discriminator_loss"], bce)
    weighted, _ = electra_loss(generator_logits, mlm_labels, discriminator_logits, rtd_labels, 1.0)
    assert torch.allclose(weighted, mlm + bce)


def test_step_with_shared_embeddings_trains_both_models():
    discriminator_config = presets.get("electra-tiny", dropout=0.0, attention_dropout=0.0)
    discriminator = EncoderModel(discriminator_config)
    generator = EncoderModel(generator_config(discriminator_config))
    assert generator.config.hidden_size == discriminator_config.hidden_size // 4
    share_embeddings(generator, discriminator)
    assert generator.embeddings.token is discriminator.embeddings.token
    assert generator.lm_head.decoder.weight is discriminator.embeddings.token.weight
    assert generator.embeddings.position is discriminator.embeddings.position
    rtd = objective()
    batch = rtd(batch_of(8), SampleDraws(6, 8))
    loss, parts = rtd.pair_step(generator, discriminator, batch, SampleDraws(7, 8))
    loss.backward()
    assert torch.isfinite(loss)
    assert set(parts) == {"generator_loss", "discriminator_loss", "discriminator_accuracy"}
    assert discriminator.embeddings.token.weight.grad.abs().sum() > 0
    assert next(generator.encoder.parameters()).grad is not None
    assert discriminator.rtd_head.prediction.weight.grad.abs().sum() > 0
