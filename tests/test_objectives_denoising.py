"""BART denoising: each noise switch alone does what it says; targets are the original."""

from __future__ import annotations

import math

import pytest
import torch

from triform.errors import ConfigError
from triform.objectives import Denoising, DenoisingConfig, SampleDraws

V, B, L = 1000, 512, 128
BOS, PAD, EOS, UNK, MASK, STOP = 0, 1, 2, 3, 4, 5  # RoBERTa/BART ids; STOP ends a sentence
OFF = dict(text_infilling=0.0, sentence_permutation=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def documents(seed: int = 0, stop_rate: float = 0.1) -> dict[str, torch.Tensor]:
    """``<s> content </s> <pad>...``; content ids are distinct within a row (so that the
    output can be aligned with the input) and ~``stop_rate`` of them are sentence ends."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(B, V - 6, generator=g).argsort(1)[:, : L - 2] + 6  # distinct ids >= 6
    ids[torch.rand(ids.shape, generator=g) < stop_rate] = STOP
    lengths = torch.randint(20, L - 1, (B,), generator=g)  # content tokens per row
    position = torch.arange(L - 2)
    ids = torch.where(position < lengths.unsqueeze(1), ids, PAD)
    framed = torch.full((B, L), PAD)
    framed[:, 0] = BOS
    framed[:, 1:-1] = ids
    framed[torch.arange(B), lengths + 1] = EOS
    return {"input_ids": framed, "attention_mask": (framed != PAD).long()}


def objective(**options) -> Denoising:
    return Denoising(
        DenoisingConfig(
            vocab_size=V,
            mask_id=MASK,
            pad_id=PAD,
            eos_id=EOS,
            special_ids=[BOS, PAD, EOS, UNK, MASK],
            sentence_end_ids=[STOP],
            **options,
        )
    )


def content(row: torch.Tensor) -> list[int]:
    """A framed row's tokens between ``<s>`` and ``</s>``."""
    tokens = row.tolist()
    assert tokens[0] == BOS
    return tokens[1 : tokens.index(EOS)]


def is_subsequence(small: list[int], big: list[int]) -> bool:
    it = iter(big)
    return all(token in it for token in small)


def check_targets(batch, out):
    """Labels are the original, decoder inputs are them shifted right after </s>."""
    ids = batch["input_ids"]
    assert torch.equal(out["labels"], ids.masked_fill(ids == PAD, -100))
    assert (out["decoder_input_ids"][:, 0] == EOS).all()
    shifted = out["labels"][:, :-1].masked_fill(out["labels"][:, :-1] == -100, PAD)
    assert torch.equal(out["decoder_input_ids"][:, 1:], shifted)
    assert torch.equal(out["decoder_attention_mask"], batch["attention_mask"])
    lengths = out["attention_mask"].sum(1)
    assert (out["input_ids"][torch.arange(B), lengths - 1] == EOS).all()
    assert (out["input_ids"][:, 0] == BOS).all()


def test_text_infilling_masks_30_percent_in_poisson_spans():
    batch = documents(stop_rate=0.0)
    out = objective(sentence_permutation=0.0)(batch, SampleDraws(1, B))
    check_targets(batch, out)
    masked_total = tokens_total = masks_total = 0
    for row in range(B):
        before, after = content(batch["input_ids"][row]), content(out["input_ids"][row])
        kept = [t for t in after if t != MASK]
        assert is_subsequence(kept, before)
        removed = len(before) - len(kept)
        assert removed == round(0.3 * len(before))  # exactly the budget
        masked_total += removed
        tokens_total += len(before)
        masks_total += after.count(MASK)
        # a mask stands right before every place where tokens were removed
        position = {t: i for i, t in enumerate(before)}
        previous = -1
        for i, token in enumerate(after + [None]):
            if token == MASK:
                continue
            index = len(before) if token is None else position[token]
            if index - previous > 1:
                assert i > 0 and after[i - 1] == MASK
            previous = index
    assert masked_total / tokens_total == pytest.approx(0.3, abs=0.005)
    # one mask per span, spans of mean ~3 (the last of each row is trimmed to the budget)
    assert masked_total / masks_total == pytest.approx(3.0, abs=0.25)


def test_poisson_span_lengths():
    noise = objective()
    lengths, kept = noise.span_lengths(torch.full((512,), 126), L, SampleDraws(2, 512))
    assert torch.equal(lengths.sum(1), torch.full((512,), round(0.3 * 126)))
    assert (lengths[~kept] == 0).all()
    # long documents: spans are Poisson(3) draws (but for the last one, trimmed to fit)
    lengths, kept = noise.span_lengths(torch.full((64,), 10_000), 10_000, SampleDraws(3, 64))
    spans = kept.sum(1)
    inner = lengths[torch.arange(lengths.size(1)) < (spans - 1).unsqueeze(1)].double()
    assert inner.mean().item() == pytest.approx(3.0, abs=0.03)
    assert inner.var().item() == pytest.approx(3.0, abs=0.1)
    assert (inner == 0).double().mean().item() == pytest.approx(math.exp(-3), abs=0.005)


def test_zero_length_spans_insert_masks():
    batch = documents(3, stop_rate=0.0)
    out = objective(sentence_permutation=0.0, poisson_lambda=0.5)(batch, SampleDraws(3, B))
    check_targets(batch, out)
    inserted = 0
    for row in range(B):
        before, after = content(batch["input_ids"][row]), content(out["input_ids"][row])
        kept = [t for t in after if t != MASK]
        assert len(before) - len(kept) == round(0.3 * len(before))
        inserted += after.count(MASK) - sum(  # more masks than removed runs: insertions
            1 for i, t in enumerate(after) if t == MASK and (i == 0 or after[i - 1] != MASK)
        )
    assert inserted > 0


def test_token_masking_and_deletion_counts():
    batch = documents(4)
    out = objective(**OFF, token_masking=0.15)(batch, SampleDraws(4, B))
    check_targets(batch, out)
    assert torch.equal(out["attention_mask"], batch["attention_mask"])
    changed = out["input_ids"] != batch["input_ids"]
    assert (out["input_ids"][changed] == MASK).all()
    n = batch["attention_mask"].sum(1) - 2
    assert torch.equal(changed.sum(1), torch.round(n.double() * 0.15).long())

    out = objective(**OFF, token_deletion=0.2)(batch, SampleDraws(5, B))
    check_targets(batch, out)
    assert torch.equal(
        batch["attention_mask"].sum(1) - out["attention_mask"].sum(1),
        torch.round(n.double() * 0.2).long(),
    )
    for row in range(0, B, 7):
        before, after = content(batch["input_ids"][row]), content(out["input_ids"][row])
        assert MASK not in after and is_subsequence(after, before)


def test_document_rotation_is_a_rotation():
    batch = documents(5, stop_rate=0.0)
    out = objective(**OFF, document_rotation=1.0)(batch, SampleDraws(6, B))
    check_targets(batch, out)
    rotated = 0
    for row in range(B):
        before, after = content(batch["input_ids"][row]), content(out["input_ids"][row])
        shift = before.index(after[0])
        assert after == before[shift:] + before[:shift]
        rotated += shift != 0
    assert rotated > 0.95 * B
    half = objective(**OFF, document_rotation=0.5)(batch, SampleDraws(7, B))
    share = (half["input_ids"] != batch["input_ids"]).any(1).double().mean().item()
    assert share == pytest.approx(0.5, abs=0.08)


def sentences(tokens: list[int]) -> list[tuple[int, ...]]:
    out, current = [], []
    for token in tokens:
        current.append(token)
        if token == STOP:
            out.append(tuple(current))
            current = []
    return out + ([tuple(current)] if current else [])


def test_sentence_permutation_preserves_the_sentences():
    batch = documents(6)
    out = objective(text_infilling=0.0)(batch, SampleDraws(8, B))
    check_targets(batch, out)
    assert torch.equal(out["attention_mask"], batch["attention_mask"])
    moved = several = 0
    for row in range(B):
        before = sentences(content(batch["input_ids"][row]))
        after_tokens = content(out["input_ids"][row])
        assert sorted(after_tokens) == sorted(content(batch["input_ids"][row]))
        # the output is the input's sentences in another order
        starts = {s[0]: s for s in before}
        rebuilt, i = [], 0
        while i < len(after_tokens):
            sentence = starts[after_tokens[i]]
            assert tuple(after_tokens[i : i + len(sentence)]) == sentence
            rebuilt.append(sentence)
            i += len(sentence)
        assert sorted(rebuilt) == sorted(before)
        several += len(before) > 2
        moved += rebuilt != before
    assert moved > 0.9 * several

    # the reader may mark the sentence ends instead
    ends = batch["input_ids"] == STOP
    plain = Denoising(
        DenoisingConfig(
            vocab_size=V,
            mask_id=MASK,
            pad_id=PAD,
            eos_id=EOS,
            special_ids=[BOS, PAD, EOS],
            text_infilling=0.0,
        )
    )
    again = plain({**batch, "sentence_ends": ends}, SampleDraws(8, B))
    assert torch.equal(again["input_ids"], out["input_ids"])


def test_partial_permutation_moves_only_some_sentences():
    batch = documents(7, stop_rate=0.2)
    out = objective(text_infilling=0.0, sentence_permutation=0.3)(batch, SampleDraws(9, B))
    for row in range(0, B, 3):
        before = sentences(content(batch["input_ids"][row]))
        after = sentences(content(out["input_ids"][row]))
        if before[-1][-1] != STOP:  # a last sentence without a stop may merge when moved
            continue
        assert sorted(after) == sorted(before)
        displaced = sum(a != b for a, b in zip(after, before, strict=True))
        assert displaced <= math.ceil(0.3 * len(before))


def test_bart_defaults_together_are_reproducible():
    batch = documents(8)
    noise = Denoising.from_dict(
        {"name": "denoising"},
        vocab_size=V,
        mask_id=MASK,
        pad_id=PAD,
        eos_id=EOS,
        special_ids=[BOS, PAD, EOS, UNK, MASK],
        sentence_end_ids=[STOP],
    )
    a = noise(batch, SampleDraws(10, B))
    b = noise(batch, SampleDraws(10, B))
    assert all(torch.equal(a[k], b[k]) for k in a)
    check_targets(batch, a)
    everything = objective(token_masking=0.1, token_deletion=0.1, document_rotation=0.5)
    out = everything(batch, SampleDraws(11, B))
    check_targets(batch, out)


def test_config_errors():
    with pytest.raises(ConfigError, match="objective.token_deletion"):
        Denoising.from_dict(
            {"token_deletion": -0.1}, vocab_size=V, mask_id=MASK, pad_id=PAD, eos_id=EOS
        )
    with pytest.raises(ConfigError, match="objective.mask_id"):
        Denoising.from_dict({}, vocab_size=V, pad_id=PAD, eos_id=EOS)
    with pytest.raises(ConfigError, match="objective.poisson_lambda"):
        Denoising.from_dict(
            {"poisson_lambda": 0}, vocab_size=V, mask_id=MASK, pad_id=PAD, eos_id=EOS
        )
