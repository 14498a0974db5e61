"""Subword regularization in pretraining (``data.subword_sampling``): training windows are
segmented afresh from their text, differently at every step, the same for a given seed;
framing tokens stay in place; validation is untouched; a run with it trains and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from triform.cli import main
from triform.data import Corpus
from triform.data.readers import PackedSequences
from triform.data.resampling import ResampledReader
from triform.data.shards import ShardSet, prepare_shards
from triform.tokenizers import SpecialTokens, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat " * 40


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    tok = train_tokenizer([TEXT], kind="unigram", vocab_size=60, family="bert")
    folder = tmp_path_factory.mktemp("shards")
    corpus = Corpus.from_texts([TEXT] * 6)
    prepare_shards(corpus, tok, folder, val_fraction=0.2, workers=0, progress=False)
    return tok, ShardSet(folder, split="train", tokenizer=tok)


def _reader(tok, train, seed: int = 0) -> ResampledReader:
    special = SpecialTokens.from_tokenizer(tok)
    base = PackedSequences(train, 32, 4, 0, cls_id=special.cls_id, sep_id=special.sep_id)
    ids = set(special.all_special_ids)
    return ResampledReader(base, tok, {"alpha": 0.5}, seed, ids, special.pad_id)


def test_windows_are_segmented_afresh_and_repeatably(shards) -> None:
    tok, train = shards
    special = SpecialTokens.from_tokenizer(tok)
    reader = _reader(tok, train)
    one, again, other = reader.batch(3), _reader(tok, train).batch(3), reader.batch(4)
    plain = reader.reader.batch(3)["input_ids"]
    assert torch.equal(one["input_ids"], again["input_ids"])  # a function of (seed, step)
    assert not torch.equal(one["input_ids"], plain)  # sampled, not the stored segmentation
    assert not torch.equal(_reader(tok, train, seed=1).batch(3)["input_ids"], one["input_ids"])
    assert one["input_ids"].shape == plain.shape and other["input_ids"].shape == plain.shape
    ids = one["input_ids"]
    assert (ids[:, 0] == special.cls_id).all()  # the framing stays where it was
    mask = one["attention_mask"].bool()
    last = mask.sum(1) - 1
    assert (ids[torch.arange(len(ids)), last] == special.sep_id).all()
    # the sampled pieces spell the stored text's words (a prefix: longer samples are cut)
    for row, m, stored in zip(ids, mask, plain, strict=True):
        sampled_text = tok.decode(row[m].tolist()).split()
        stored_text = tok.decode(stored.tolist()).split()
        assert sampled_text[:-1] == stored_text[: len(sampled_text) - 1]


def test_a_run_with_subword_sampling_trains_and_refuses_pair_readers(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"d{i}.txt").write_text(TEXT.replace("mat ", "mat\n"))
    base = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_size=64",
            "train.batch_size=4", "train.steps=3", "train.eval_every=3", "train.progress=false",
            "train.tensorboard=false", "train.eval_batches=1", "data.seq_len=32",
            "data.val_fraction=0.25", "data.workers=1", "tokenizer.kind='unigram'",
            "tokenizer.vocab_size=80", "data.subword_sampling={alpha=0.3}",
            f"data.corpus={json.dumps(str(corpus))}"]  # fmt: skip
    args = []
    for item in [*base, f"train.out_dir={json.dumps(str(tmp_path / 'roberta'))}"]:
        args += ["--set", item]
    root = Path(__file__).parents[1] / "configs"
    assert main(["pretrain", str(root / "roberta-mlm.toml"), *args]) == 0
    args = []
    for item in [*base, f"train.out_dir={json.dumps(str(tmp_path / 'bert'))}"]:
        args += ["--set", item]
    assert main(["pretrain", str(root / "bert-mlm-nsp.toml"), *args]) == 2
    err = capsys.readouterr().err
    assert "objective mlm-nsp does not read packed token windows" in err
    assert "sampling works with causal-lm, distill, mlm, rtd, span-corruption, span-mlm" in err
    assert not (tmp_path / "bert").exists()  # refused from the config: nothing written
    assert main(["pretrain", str(root / "roberta-mlm.toml"), "--set",
                 "data.subword_sampling={beta=1}"]) == 2  # fmt: skip
    assert "unknown key data.subword_sampling.beta" in capsys.readouterr().err
