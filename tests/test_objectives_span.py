"""T5 span corruption: densities, span lengths, exact packed lengths, reconstruction."""

from __future__ import annotations

import pytest
import torch

from triform.errors import ConfigError, TriformError
from triform.objectives import SampleDraws, SpanCorruption, SpanCorruptionConfig, t5_span_lengths
from triform.objectives.span_corruption import corrupted_lengths

V, B = 1100, 512
PAD, EOS = 0, 1
SENTINELS = [V - 1 - i for i in range(100)]  # <extra_id_0> is the last id, as in T5


pytestmark = pytest.mark.usefixtures("one_thread")


def objective(**options) -> SpanCorruption:
    return SpanCorruption(
        SpanCorruptionConfig(sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD, **options)
    )


def spans_of(input_row: list[int], target_row: list[int]) -> list[list[int]]:
    """The spans of a target: the tokens after each sentinel."""
    spans: list[list[int]] = []
    for token in target_row:
        if token in SENTINELS:
            spans.append([])
        elif token == EOS:
            break
        else:
            spans[-1].append(token)
    return spans


def reconstruct(input_row: list[int], target_row: list[int]) -> list[int]:
    spans = spans_of(input_row, target_row)
    out: list[int] = []
    for token in input_row:
        if token == EOS:
            break
        out.extend(spans[SENTINELS.index(token)] if token in SENTINELS else [token])
    return out


def test_lengths_match_the_t5_helper():
    # T5's published pairing: inputs of 512 from 568 raw tokens, targets of 114
    assert t5_span_lengths(512) == (568, 114)
    assert t5_span_lengths(128) == (141, 29)
    for length in range(8, 600, 7):
        raw, target = t5_span_lengths(length)
        assert corrupted_lengths(raw) == (length, target)
        assert corrupted_lengths(raw + 1)[0] > length  # the largest raw length that fits
    with pytest.raises(ConfigError):
        t5_span_lengths(2)


def test_packed_examples_fill_the_lengths_exactly_and_reconstruct():
    raw, target = t5_span_lengths(128)
    ids = torch.randint(2, 1000, (B, raw), generator=torch.Generator().manual_seed(0))
    span = objective()
    assert span.source_length(128) == raw and span.target_length(128) == target
    out = span({"input_ids": ids}, SampleDraws(1, B))
    assert out["input_ids"].shape == (B, 128)
    assert out["labels"].shape == (B, target)
    assert out["attention_mask"].all() and out["decoder_attention_mask"].all()  # no padding
    assert (out["input_ids"] != PAD).all() and (out["labels"] != -100).all()
    assert (out["input_ids"][:, -1] == EOS).all() and (out["labels"][:, -1] == EOS).all()
    assert (out["decoder_input_ids"][:, 0] == PAD).all()  # T5 starts the decoder with pad
    assert torch.equal(out["decoder_input_ids"][:, 1:], out["labels"][:, :-1])

    noise_tokens, span_count, span_lengths = 0, 0, []
    for row in range(B):
        inputs, labels = out["input_ids"][row].tolist(), out["labels"][row].tolist()
        assert reconstruct(inputs, labels) == ids[row].tolist()
        in_sentinels = [t for t in inputs if t in SENTINELS]
        target_sentinels = [t for t in labels if t in SENTINELS]
        assert in_sentinels == target_sentinels == SENTINELS[: len(in_sentinels)]  # in order
        spans = spans_of(inputs, labels)
        assert all(spans)  # every span is non-empty
        span_lengths += [len(s) for s in spans]
        noise_tokens += sum(len(s) for s in spans)
        span_count += len(spans)
    assert noise_tokens / (B * raw) == pytest.approx(0.15, abs=0.003)
    assert noise_tokens / span_count == pytest.approx(3.0, abs=0.05)
    assert max(span_lengths) > 6  # the lengths are random, not all 3
    assert span_lengths.count(1) > 0.1 * len(span_lengths)


def test_rows_of_different_lengths_are_padded():
    raw, _ = t5_span_lengths(64)
    ids = torch.randint(2, 1000, (B, raw), generator=torch.Generator().manual_seed(2))
    lengths = torch.randint(1, raw + 1, (B,), generator=torch.Generator().manual_seed(3))
    mask = (torch.arange(raw) < lengths.unsqueeze(1)).long()
    out = objective()({"input_ids": ids * mask, "attention_mask": mask}, SampleDraws(4, B))
    assert out["input_ids"].shape[1] == 64
    for row in range(0, B, 5):
        n = int(lengths[row])
        expected_in, expected_target = corrupted_lengths(n)
        assert int(out["attention_mask"][row].sum()) == expected_in
        assert int((out["labels"][row] != -100).sum()) == expected_target
        assert (out["input_ids"][row, expected_in:] == PAD).all()
        inputs, labels = out["input_ids"][row].tolist(), out["labels"][row].tolist()
        assert reconstruct(inputs, labels) == ids[row, :n].tolist()


def test_reproducible_from_the_seed_and_samples():
    ids = torch.randint(2, 1000, (8, 141), generator=torch.Generator().manual_seed(5))
    span = objective()
    a = span({"input_ids": ids}, SampleDraws(6, 8))
    b = span({"input_ids": ids}, SampleDraws(6, 8))
    c = span({"input_ids": ids}, SampleDraws(7, 8))
    d = span({"input_ids": ids}, SampleDraws(6, torch.arange(8, 16)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert not torch.equal(a["input_ids"], d["input_ids"])


def test_other_densities_and_span_lengths():
    raw, target = t5_span_lengths(256, noise_density=0.3, mean_span_length=8.0)
    ids = torch.randint(2, 1000, (64, raw), generator=torch.Generator().manual_seed(8))
    out = objective(noise_density=0.3, mean_span_length=8.0)({"input_ids": ids}, SampleDraws(9, 64))
    assert out["input_ids"].shape == (64, 256) and out["labels"].shape == (64, target)
    row = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    assert reconstruct(*row) == ids[0].tolist()


def test_errors():
    with pytest.raises(ConfigError, match="objective.sentinel_ids"):
        SpanCorruption.from_dict({}, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ConfigError, match="objective.noise_density"):
        SpanCorruption.from_dict(
            {"noise_density": 1.5}, sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD
        )
    few = SpanCorruption.from_dict({}, sentinel_ids=SENTINELS[:3], eos_id=EOS, pad_id=PAD)
    with pytest.raises(TriformError, match="sentinel"):
        few({"input_ids": torch.ones(2, 141, dtype=torch.long)}, SampleDraws(0, 2))
