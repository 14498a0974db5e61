"""Sequence to sequence on parallel text: reading, batching, shifting, label smoothing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from triform.errors import ConfigError, TriformError
from triform.objectives import (
    ParallelCorpus,
    Seq2Seq,
    label_smoothed_cross_entropy,
    read_pairs,
)

BOS, PAD, EOS = 0, 1, 2


def test_decoder_inputs_are_targets_shifted_right():
    corpus = ParallelCorpus(
        [[BOS, 5, 6, EOS], [BOS, 7, EOS]], [[BOS, 8, EOS], [BOS, 9, 10, 11, EOS]]
    )
    batch = corpus.collate(torch.tensor([0, 1]), PAD)
    assert batch["input_ids"].tolist() == [[BOS, 5, 6, EOS], [BOS, 7, EOS, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    out = Seq2Seq.from_dict({"name": "seq2seq"}, pad_id=PAD, eos_id=EOS)(batch)
    assert out["labels"].tolist() == [[BOS, 8, EOS, -100, -100], [BOS, 9, 10, 11, EOS]]
    assert out["decoder_input_ids"].tolist() == [[EOS, BOS, 8, EOS, PAD], [EOS, BOS, 9, 10, 11]]
    assert out["decoder_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert torch.equal(out["input_ids"], batch["input_ids"])
    start = Seq2Seq.from_dict({"decoder_start_id": PAD}, pad_id=PAD, eos_id=EOS)(batch)
    assert start["decoder_input_ids"][:, 0].tolist() == [PAD, PAD]


def test_label_smoothing_matches_torch_and_a_hand_computation():
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0]], [[0.1, 0.2, 0.3, 0.4]]])  # (2, 1, 4)
    labels = torch.tensor([[0], [3]])
    eps, V = 0.1, 4
    log_p = F.log_softmax(logits, -1)
    by_hand = []
    for row, label in ((0, 0), (1, 3)):
        lp = log_p[row, 0]
        uniform = -((1 - eps) * lp[label] + sum(eps / V * lp[k] for k in range(V)))
        by_hand.append(uniform)
    loss = label_smoothed_cross_entropy(logits, labels, eps)
    assert torch.allclose(loss, torch.stack(by_hand).mean())
    torch_loss = F.cross_entropy(logits.view(-1, V), labels.view(-1), label_smoothing=eps)
    assert torch.allclose(loss, torch_loss)
    # fairseq: 1 - eps on the target, eps / (V - 1) on each other class
    fair = []
    for row, label in ((0, 0), (1, 3)):
        lp = log_p[row, 0]
        others = sum(lp[k] for k in range(V) if k != label)
        fair.append(-((1 - eps) * lp[label] + eps / (V - 1) * others))
    fairseq = label_smoothed_cross_entropy(logits, labels, eps, kind="fairseq")
    assert torch.allclose(fairseq, torch.stack(fair).mean())
    assert not torch.allclose(fairseq, loss)


def test_label_smoothing_ignores_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[0, 4:] = -100
    ours = label_smoothed_cross_entropy(logits, labels, 0.1)
    theirs = F.cross_entropy(logits.view(-1, 50), labels.view(-1), label_smoothing=0.1)
    assert torch.allclose(ours, theirs, atol=1e-6)
    per_token = label_smoothed_cross_entropy(logits, labels, 0.1, reduction="none")
    assert (per_token[0, 4:] == 0).all()
    assert torch.allclose(
        per_token.sum(), label_smoothed_cross_entropy(logits, labels, 0.1, reduction="sum")
    )
    assert torch.allclose(
        label_smoothed_cross_entropy(logits, labels, 0.0),
        F.cross_entropy(logits.view(-1, 50), labels.view(-1)),
    )


def test_read_pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("ein Haus\ta house\n\nzwei\ttwo\r\n", encoding="utf-8")
    assert read_pairs(path) == [("ein Haus", "a house"), ("zwei", "two")]
    path.write_text("good\tline\nbad line\n", encoding="utf-8")
    with pytest.raises(TriformError, match=r"pairs.tsv:2"):
        read_pairs(path)
    with pytest.raises(TriformError, match="not found"):
        read_pairs(tmp_path / "missing.tsv")


def test_tokenized_corpus_batches_by_length(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors, trainers

    words = [f"w{i}" for i in range(40)]
    lines = [
        (" ".join(words[: 1 + i % 30]), " ".join(words[: 1 + (i * 7) % 20])) for i in range(300)
    ]
    path = tmp_path / "train.tsv"
    path.write_text("".join(f"{s}\t{t}\n" for s, t in lines), encoding="utf-8")
    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        words, trainers.WordLevelTrainer(special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)]
    )
    seq2seq = Seq2Seq.from_dict({"max_source_length": 12}, pad_id=PAD, eos_id=EOS)
    corpus = seq2seq.corpus(path, tok)
    assert len(corpus) == 300
    source_len, target_len = corpus.lengths()
    assert source_len.max().item() == 12  # truncated, keeping </s>
    batch = corpus.collate(torch.arange(300), PAD)
    assert (batch["input_ids"][torch.arange(300), source_len - 1] == EOS).all()

    rows = corpus.batch_rows(16, torch.Generator().manual_seed(1), bucket_batches=4)
    assert sorted(torch.cat(rows).tolist()) == list(range(300))  # one epoch, each row once
    padded = sum(corpus.collate(r, PAD)["target_mask"].numel() for r in rows)
    unbucketed = sum(
        corpus.collate(r, PAD)["target_mask"].numel()
        for r in torch.randperm(300, generator=torch.Generator()).split(16)
    )
    assert padded < unbucketed  # bucketing saves padding
    again = corpus.batch_rows(16, torch.Generator().manual_seed(1), bucket_batches=4)
    assert all(torch.equal(a, b) for a, b in zip(rows, again, strict=True))
    assert len(corpus.batch_rows(16, drop_last=True)) == 300 // 16
    for batch in corpus.batches(32, PAD, torch.Generator().manual_seed(2)):
        out = seq2seq(batch)
        assert (out["labels"] == -100).sum() == (batch["target_mask"] == 0).sum()
        assert (out["decoder_input_ids"][:, 0] == EOS).all()


def test_loss_reports_the_plain_nll():
    seq2seq = Seq2Seq.from_dict({}, pad_id=PAD, eos_id=EOS)
    logits = torch.zeros(2, 3, 8)
    labels = torch.tensor([[3, 4, -100], [5, -100, -100]])

    class Output:
        pass

    output = Output()
    output.logits = logits
    loss, parts = seq2seq.loss(output, {"labels": labels})
    assert torch.allclose(loss, torch.tensor(math.log(8.0)))  # uniform logits: smoothing is moot
    assert torch.allclose(parts["nll_loss"], torch.tensor(math.log(8.0)))


def test_config_errors():
    with pytest.raises(ConfigError, match="objective.label_smoothing"):
        Seq2Seq.from_dict({"label_smoothing": 1.0}, pad_id=PAD, eos_id=EOS)
    with pytest.raises(ConfigError, match="objective.decoder_start_id"):
        Seq2Seq.from_dict({}, pad_id=PAD)
    with pytest.raises(ConfigError, match="objective.smoothing"):
        Seq2Seq.from_dict({"smoothing": "other"}, pad_id=PAD, eos_id=EOS)
