"""Masked LM: the statistics it promises on a large batch, static vs dynamic, whole words."""

from __future__ import annotations

import pytest
import torch

from triform.errors import ConfigError, TriformError
from triform.objectives import MaskedLM, MaskedLMConfig, SampleDraws, continuation_table

V, B, L = 1000, 512, 128
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = [PAD, UNK, CLS, SEP, MASK]


pytestmark = pytest.mark.usefixtures("one_thread")


def framed_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """``[CLS] tokens [SEP] [PAD]...`` rows of random real lengths 32..L."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, L), generator=g)
    lengths = torch.randint(32, L + 1, (B,), generator=g)
    position = torch.arange(L)
    ids[:, 0] = CLS
    ids[position == (lengths - 1).unsqueeze(1)] = SEP
    mask = position < lengths.unsqueeze(1)
    ids[~mask] = PAD
    return {"input_ids": ids, "attention_mask": mask.long()}


def objective(**options) -> MaskedLM:
    return MaskedLM(
        MaskedLMConfig(vocab_size=V, mask_id=MASK, pad_id=PAD, special_ids=SPECIAL, **options)
    )


def stats(batch, out) -> dict[str, float]:
    ids = batch["input_ids"]
    candidate = batch["attention_mask"].bool() & (ids >= 5)
    selected = out["labels"] != -100
    masked = selected & (out["input_ids"] == MASK)
    unchanged = selected & (out["input_ids"] == ids)
    random = selected & ~masked & ~unchanged
    n = selected.sum().item()
    return {
        "rate": n / candidate.sum().item(),
        "mask": masked.sum().item() / n,
        "random": random.sum().item() / n,
        "unchanged": unchanged.sum().item() / n,
    }


def test_selection_rate_and_80_10_10_split():
    batch = framed_batch()
    out = objective()(batch, SampleDraws(1, B))
    s = stats(batch, out)
    # ~47k candidates, ~7k selected: the tolerances are about 4 standard deviations
    assert abs(s["rate"] - 0.15) < 0.007
    assert abs(s["mask"] - 0.8) < 0.02
    assert abs(s["random"] - 0.1) < 0.015
    assert abs(s["unchanged"] - 0.1) < 0.015
    selected = out["labels"] != -100
    assert torch.equal(out["labels"][selected], batch["input_ids"][selected])
    assert torch.equal(out["input_ids"][~selected], batch["input_ids"][~selected])
    assert torch.equal(out["attention_mask"], batch["attention_mask"])


def test_special_tokens_and_padding_never_selected():
    batch = framed_batch()
    out = objective(mask_prob=0.9)(batch, SampleDraws(2, B))
    selected = out["labels"] != -100
    special = torch.isin(batch["input_ids"], torch.tensor(SPECIAL))
    assert not (selected & special).any()
    assert not (selected & (batch["attention_mask"] == 0)).any()
    replaced = selected & (out["input_ids"] != batch["input_ids"]) & (out["input_ids"] != MASK)
    assert replaced.any()
    assert not torch.isin(out["input_ids"][replaced], torch.tensor(SPECIAL)).any()


def test_exact_selection_counts():
    batch = framed_batch()
    out = objective(selection="exact")(batch, SampleDraws(3, B))
    candidates = (batch["attention_mask"].bool() & (batch["input_ids"] >= 5)).sum(1)
    expected = torch.round(candidates.double() * 0.15).long()
    assert torch.equal((out["labels"] != -100).sum(1), expected)


def test_dynamic_masks_differ_between_epochs_and_replay_with_the_seed():
    batch = framed_batch()
    mlm = objective()
    first = mlm(batch, SampleDraws(4, B))
    # the same rows read again in the next epoch are new samples: new masks
    second = mlm(batch, SampleDraws(4, torch.arange(B) + B))
    assert not torch.equal(first["labels"], second["labels"])
    assert not torch.equal(first["labels"], mlm(batch, SampleDraws(5, B))["labels"])
    again = mlm(batch, SampleDraws(4, B))
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert torch.equal(first["labels"], again["labels"])


def test_static_masks_are_fixed_per_example():
    batch = framed_batch()
    batch["example_ids"] = torch.arange(B) + 10_000
    mlm = objective(masking="static", static_seed=7)
    first = mlm(batch, SampleDraws(0, B))
    second = mlm(batch, SampleDraws(99, B))  # the draws play no part
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert torch.equal(first["labels"], second["labels"])
    # the same example gets the same mask in any batch, at any row
    order = torch.randperm(B, generator=torch.Generator().manual_seed(5))
    shuffled = mlm({k: v[order] for k, v in batch.items()}, SampleDraws(0, B))
    assert torch.equal(shuffled["labels"], first["labels"][order])
    # another seed, another mask; and the promised statistics still hold
    other = objective(masking="static", static_seed=8)(batch, SampleDraws(0, B))
    assert not torch.equal(other["labels"], first["labels"])
    s = stats(batch, first)
    assert abs(s["rate"] - 0.15) < 0.007 and abs(s["mask"] - 0.8) < 0.02
    with pytest.raises(TriformError, match="example_ids"):
        mlm(framed_batch(), SampleDraws(0, B))


def words_batch(seed: int = 0):
    """Tokens >= 500 are continuation pieces (half of all tokens)."""
    g = torch.Generator().manual_seed(seed)
    batch = framed_batch(seed)
    ids = batch["input_ids"]
    pieces = torch.randint(5, 500, ids.shape, generator=g)
    is_piece = torch.rand(ids.shape, generator=g) < 0.5
    pieces[is_piece] += 495  # ids 500..994
    content = batch["attention_mask"].bool() & (ids >= 5)
    content[:, 1] = False  # keep [CLS] then the first word start
    ids[content] = pieces[content]
    table = torch.zeros(V, dtype=torch.bool)
    table[500:] = True
    return batch, table


def word_of(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, L) word number of each token (pieces share their word's number)."""
    starts = ~table[ids]
    return starts.long().cumsum(1)


@pytest.mark.parametrize("selection", ["bernoulli", "exact"])
def test_whole_word_masking_masks_all_pieces_together(selection):
    batch, table = words_batch()
    mlm = MaskedLM(
        MaskedLMConfig(
            vocab_size=V,
            mask_id=MASK,
            pad_id=PAD,
            special_ids=SPECIAL,
            whole_word=True,
            selection=selection,
        ),
        is_continuation=table,
    )
    out = mlm(batch, SampleDraws(6, B))
    selected = out["labels"] != -100
    ids = batch["input_ids"]
    candidate = batch["attention_mask"].bool() & (ids >= 5)
    word = word_of(ids, table)
    # every word is selected whole or not at all
    for row in range(0, B, 37):
        w, s = word[row][candidate[row]], selected[row][candidate[row]]
        for number in w.unique():
            assert s[w == number].all() or not s[w == number].any()
    rate = selected.sum().item() / candidate.sum().item()
    assert abs(rate - 0.15) < 0.012
    if selection == "exact":  # whole words while they fit the budget
        budget = torch.round(candidate.sum(1).double() * 0.15).long()
        longest = torch.zeros(B, L + 2, dtype=torch.long)
        longest.scatter_add_(1, word.masked_fill(~candidate, L + 1), torch.ones_like(word))
        longest = longest[:, : L + 1].max(1).values  # the longest word of each row
        assert ((selected.sum(1) - budget).abs() < longest).all()
        assert abs(selected.sum().item() / budget.sum().item() - 1) < 0.01
    # the same with word starts given by the reader instead of a table
    batch["word_start"] = ~table[ids]
    plain = MaskedLM(
        MaskedLMConfig(
            vocab_size=V,
            mask_id=MASK,
            pad_id=PAD,
            special_ids=SPECIAL,
            whole_word=True,
            selection=selection,
        )
    )
    again = plain(batch, SampleDraws(6, B))
    assert torch.equal(again["labels"], out["labels"])


def test_whole_word_masking_with_a_wordpiece_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    text = ["unbelievable understanding of transformers", "pretraining language models"] * 50
    tok.train_from_iterator(
        text,
        trainers.WordPieceTrainer(
            vocab_size=60, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        ),
    )
    table = continuation_table(tok)
    ids = torch.tensor([tok.encode(text[0] + " " + text[1]).ids] * 256)
    assert table[ids].any() and (~table[ids]).any()
    mlm = MaskedLM.from_dict(
        {"whole_word": True, "mask_prob": 0.3},
        vocab_size=tok.get_vocab_size(),
        mask_id=4,
        pad_id=0,
        special_ids=[0, 1, 2, 3, 4],
        tokenizer=tok,
    )
    out = mlm({"input_ids": ids}, SampleDraws(0, len(ids)))
    selected = out["labels"] != -100
    word = word_of(ids, table)
    for number in word[0].unique():
        columns = word[0] == number
        assert (selected[:, columns].all(1) | ~selected[:, columns].any(1)).all()


def test_matches_huggingface_collator_statistics():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(V)}
    for i, name in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]):
        vocab[name] = i
        del vocab[f"t{i}"]
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    collator = transformers.DataCollatorForLanguageModeling(fast, mlm_probability=0.15, seed=0)
    batch = framed_batch()
    special = torch.isin(batch["input_ids"], torch.tensor(SPECIAL)).long()
    hf_inputs, hf_labels = collator.torch_mask_tokens(batch["input_ids"].clone(), special)
    ours = stats(batch, objective()(batch, SampleDraws(8, B)))
    theirs = stats(batch, {"input_ids": hf_inputs, "labels": hf_labels})
    for key in ("rate", "mask", "random", "unchanged"):
        assert abs(ours[key] - theirs[key]) < 0.03, key


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="objective.mask_prob"):
        MaskedLM.from_dict({"mask_prob": 1.5}, vocab_size=V, mask_id=MASK)
    with pytest.raises(ConfigError, match="objective.colour"):
        MaskedLM.from_dict({"colour": 1}, vocab_size=V, mask_id=MASK)
    with pytest.raises(ConfigError, match="objective.selection"):
        MaskedLM.from_dict({"selection": "some"}, vocab_size=V, mask_id=MASK)
    with pytest.raises(ConfigError, match="objective.mask_id"):
        MaskedLM.from_dict({}, vocab_size=V)
    with pytest.raises(ConfigError, match="objective.random_token_prob"):
        MaskedLM.from_dict(
            {"mask_token_prob": 0.9, "random_token_prob": 0.2}, vocab_size=V, mask_id=MASK
        )
    with pytest.raises(ConfigError, match="objective.mask_id"):
        MaskedLM.from_dict({"mask_id": V}, vocab_size=V)
