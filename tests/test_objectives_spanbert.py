"""SpanBERT: span lengths, masking budget, whole words, per-span 80/10/10, span boundaries,
the SBO head and loss, and the run-folder layout of the model it trains."""

from __future__ import annotations

import pytest
import torch

import triform
from triform.errors import ConfigError, TriformError
from triform.objectives import (
    SampleDraws,
    SpanBertModel,
    SpanMaskingConfig,
    SpanMLM,
    build_objective,
)
from triform.objectives.masked_lm import continuation_table
from triform.objectives.span_bert import sample_span_lengths, span_boundaries, span_length_mean

V, MASK, PAD, CLS, SEP = 1000, 4, 0, 2, 3
SPECIAL = [0, 1, 2, 3, 4]

pytestmark = pytest.mark.usefixtures("one_thread")


def objective(**options) -> SpanMLM:
    return SpanMLM(
        SpanMaskingConfig(vocab_size=V, mask_id=MASK, pad_id=PAD, special_ids=SPECIAL, **options)
    )


def framed(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids framed by [CLS] ... [SEP], and random word starts (words of ~1.4 pieces)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), V, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids, torch.rand(batch, length, generator=g) < 0.7


def runs(selected: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, first, last) of every maximal run of selected positions (a reference loop)."""
    found = []
    for row, line in enumerate(selected.tolist()):
        position = 0
        while position < len(line):
            if line[position]:
                end = position
                while end + 1 < len(line) and line[end + 1]:
                    end += 1
                found.append((row, position, end))
                position = end + 1
            else:
                position += 1
    return found


def test_span_lengths_follow_the_truncated_geometric():
    assert span_length_mean(0.2, 10) == pytest.approx(3.797, abs=1e-3)  # the paper's 3.8
    u = torch.rand(400_000, generator=torch.Generator().manual_seed(0))
    lengths = sample_span_lengths(u, 0.2, 10)
    assert lengths.min() == 1 and lengths.max() == 10
    assert lengths.double().mean() == pytest.approx(span_length_mean(0.2, 10), abs=0.02)
    share = torch.bincount(lengths, minlength=11)[1:].double() / lengths.numel()
    expected = torch.tensor([0.2 * 0.8**k for k in range(10)], dtype=torch.double)
    assert torch.allclose(share, expected / expected.sum(), atol=3e-3)
    assert (sample_span_lengths(u[:100], 1.0, 10) == 1).all()


def test_budget_whole_words_and_span_lengths_on_a_large_batch():
    ids, word_start = framed(512, 256)
    out = objective()({"input_ids": ids, "word_start": word_start}, SampleDraws(0, len(ids)))
    selected = out["labels"] != -100
    candidates = ids.size(1) - 2
    budget = round(0.15 * candidates)
    per_row = selected.sum(1)
    assert not selected[:, [0, -1]].any()  # [CLS] and [SEP] are never masked
    assert (per_row <= budget).all()
    # within one word of the budget: the crossing draw keeps only whole words that fit
    assert (per_row >= budget - 8).all() and per_row.double().mean() > budget - 1.5
    assert per_row.sum() / (512 * candidates) == pytest.approx(0.15, abs=0.005)
    # whole words: a masked word is masked in all its pieces ([CLS] and [SEP] are words of
    # their own, and a piece right after [CLS] starts a word)
    starts = word_start.clone()
    starts[:, [0, 1, -1]] = True
    word = starts.long().cumsum(1)
    for row in range(16):
        for number in word[row].unique():
            pieces = selected[row][word[row] == number]
            assert pieces.all() or not pieces.any()
    # mean span length in words: the draws' 3.8, a little more where draws run together
    run_starts = selected & ~torch.nn.functional.pad(selected[:, :-1], (1, 0))
    mean_words = (selected & starts).sum() / run_starts.sum()
    assert 3.7 < mean_words < 4.3, mean_words
    assert (starts | ~run_starts).all()  # every span starts at a word start


def test_tokens_are_words_without_whole_word():
    ids, _ = framed(256, 128, seed=1)
    out = objective(whole_word=False)({"input_ids": ids}, SampleDraws(0, len(ids)))
    assert ((out["labels"] != -100).sum(1) == round(0.15 * 126)).all()  # exact in tokens


def test_replacement_is_decided_per_span():
    ids, word_start = framed(1024, 128, seed=2)
    out = objective()({"input_ids": ids, "word_start": word_start}, SampleDraws(1, len(ids)))
    selected = out["labels"] != -100
    kinds = {"mask": 0, "random": 0, "kept": 0}
    same = replaced = 0
    for row, first, last in runs(selected):
        new, old = out["input_ids"][row, first : last + 1], ids[row, first : last + 1]
        if (new == MASK).all():
            kinds["mask"] += 1
        elif (new == old).all():
            kinds["kept"] += 1
        else:
            assert not (new == MASK).any()  # never a mix of [MASK] and other tokens
            same += int((new == old).sum())  # a random token equals the original rarely
            replaced += new.numel()
            kinds["random"] += 1
    total = sum(kinds.values())
    assert same / replaced < 0.01
    assert total > 3000
    assert kinds["mask"] / total == pytest.approx(0.8, abs=0.025)
    assert kinds["random"] / total == pytest.approx(0.1, abs=0.02)
    assert kinds["kept"] / total == pytest.approx(0.1, abs=0.02)
    assert (out["input_ids"][~selected] == ids[~selected]).all()


def test_boundaries_are_the_tokens_just_outside_each_span():
    ids, word_start = framed(64, 96, seed=3)
    out = objective()({"input_ids": ids, "word_start": word_start}, SampleDraws(2, len(ids)))
    selected = out["labels"] != -100
    found = runs(selected)
    assert found
    for row, first, last in found:
        span = slice(first, last + 1)
        assert (out["span_left"][row, span] == first - 1).all()
        assert (out["span_right"][row, span] == last + 1).all()
        assert out["span_position"][row, span].tolist() == list(range(last - first + 1))
        assert not selected[row, first - 1] and not selected[row, last + 1]
    for key in ("span_left", "span_right", "span_position"):
        assert (out[key][~selected] == 0).all()
    left, right, offset = span_boundaries(torch.tensor([[True, True, False, True]]))
    assert left.tolist() == [[0, 0, 0, 2]] and right.tolist() == [[2, 2, 0, 3]]  # clamped
    assert offset.tolist() == [[0, 1, 0, 0]]


def test_draws_are_reproducible_and_padding_is_never_masked():
    ids, word_start = framed(32, 64, seed=4)
    attention = torch.ones_like(ids)
    attention[:, 40:] = 0
    batch = {"input_ids": ids, "word_start": word_start, "attention_mask": attention}
    one = objective()(batch, SampleDraws(5, len(ids)))
    two = objective()(batch, SampleDraws(5, len(ids)))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not (one["labels"][:, 40:] != -100).any()


def tiny_model(objective: SpanMLM) -> SpanBertModel:
    config = SpanMLM.fit_model_config(
        triform.presets.get(
            "bert-tiny", vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64
        )
    )
    return objective.build_model(config)


def test_sbo_loss_shapes_gradients_and_weighting():
    torch.manual_seed(0)
    span = objective()
    model = tiny_model(span)
    ids, word_start = framed(8, 48, seed=5)
    batch = span({"input_ids": ids, "word_start": word_start}, SampleDraws(0, len(ids)))
    output = model.model(**span.model_inputs(batch))
    logits = span.sbo_logits(model.model, model.sbo_head, output.last_hidden_state, batch)
    masked = int((batch["labels"] != -100).sum())
    assert logits.shape == (masked, V)
    loss, parts = model(batch, SampleDraws(0, len(ids)))
    assert torch.allclose(loss, parts["mlm_loss"] + parts["sbo_loss"])
    assert parts["sbo_loss"] > 0 and 0 <= parts["sbo_accuracy"] <= 1
    loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("sbo_head.") or "layers" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    model.zero_grad()
    silent = objective(sbo_weight=0.0)
    silent_loss, silent_parts = silent.span_step(model.model, model.sbo_head, batch)
    assert torch.allclose(silent_loss, silent_parts["mlm_loss"])


def test_the_encoder_is_saved_under_model_and_loads_alone():
    span = objective()
    model = tiny_model(span)
    keys = model.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"model", "sbo_head"}
    encoder = triform.build_model(model.config)
    body = {k.removeprefix("model."): v for k, v in model.state_dict().items() if "sbo" not in k}
    encoder.load_state_dict(body, strict=True)
    assert model.num_parameters() > encoder.num_parameters()


def test_word_starts_from_real_tokenizers():
    """WordPiece marks continuations (##), byte-level BPE (Ġ) and SentencePiece-style
    unigram (▁) mark word starts: spans never split a word under any of them."""
    from triform.tokenizers import train_tokenizer

    text = ["the unbelievable understanding of transformers and pretraining models"] * 40
    for kind, family, size in (
        ("wordpiece", "bert", 120),
        ("byte-bpe", "roberta", 320),
        ("unigram", "albert", 120),
    ):
        tokenizer = train_tokenizer(text, kind=kind, vocab_size=size, family=family)
        table = continuation_table(tokenizer)
        ids = torch.tensor([tokenizer.encode(text[0]).ids] * 64)  # framed: <s> ... </s>
        starts = ~table[ids]
        starts[:, 1] = True  # the first piece starts a word, marked or not
        assert starts[0, 1:-1].sum() == 8, (kind, tokenizer.encode(text[0]).tokens)
        context = triform.objectives.context_from_tokenizer(tokenizer)
        span = build_objective({"name": "span-mlm", "mask_prob": 0.4}, **context)
        selected = span({"input_ids": ids}, SampleDraws(0, len(ids)))["labels"] != -100
        assert selected.any()
        word = starts.long().cumsum(1)
        for number in word[0, 1:-1].unique():
            columns = word[0] == number
            columns[-1] = False
            assert (selected[:, columns].all(1) | ~selected[:, columns].any(1)).all(), kind


def test_bad_settings_are_one_line_errors():
    for options, key in (
        ({"geometric_p": 0.0}, "objective.geometric_p"),
        ({"max_span": 0}, "objective.max_span"),
        ({"sbo_weight": -1.0}, "objective.sbo_weight"),
        ({"masking": "static"}, "objective.masking"),
        ({"selection": "bernoulli"}, "objective.selection"),
    ):
        with pytest.raises(ConfigError, match=key):
            objective(**options)
    with pytest.raises(TriformError, match="no ##"):
        from triform.tokenizers import train_tokenizer

        chars = train_tokenizer(["abc def"] * 10, kind="char", vocab_size=50, family="bert")
        build_objective({"name": "span-mlm"}, **triform.objectives.context_from_tokenizer(chars))
