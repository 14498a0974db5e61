"""``data.validation``: files that are the validation set of a pretraining run (and of
``triform data prepare --validation``), with ``val_fraction`` 0."""

from __future__ import annotations

import json

import pytest

from triform.cli import main
from triform.commands.pretrain import DEFAULT_RUN
from triform.data import Corpus
from triform.data.shards import ShardSet, prepare_shards
from triform.errors import ConfigError
from triform.tokenizers import train_tokenizer
from triform.train.run_config import load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = "".join(f"line {i} of the training text.\n\n" for i in range(60)) + (
    "Abcdefghijklmnopqrstuvwxyz, -.\t\n"  # every character of VAL
)
VAL = "A held-out text,\n\twith a tab  \nand blank lines.\n\n\n"


def test_config_defaults_and_errors(tmp_path, caplog):
    config = load_run_config(None, ['data.validation="val.txt"'], defaults=DEFAULT_RUN)
    assert config.data.validation == ["val.txt"] and config.data.val_fraction == 0.0
    assert "is not used" in caplog.text  # the defaults' val_fraction gives way, with a warning
    bare = {k: v for k, v in DEFAULT_RUN.items() if k != "data"}
    assert (
        load_run_config(None, ["data.validation=['a.txt', 'b.txt']"], bare).data.val_fraction == 0
    )
    assert load_run_config(None, [], bare).data.val_fraction == 0.05
    (tmp_path / "run.toml").write_text(
        '[model]\npreset = "gpt2-tiny"\n[data]\ncorpus = "train.txt"\nvalidation = ["v/*.txt"]\n'
        '[objective]\nname = "causal-lm"\n'
    )
    config = load_run_config(tmp_path / "run.toml")
    assert config.data.validation == [str(tmp_path / "v/*.txt")]  # relative to the file
    with pytest.raises(ConfigError, match="no validation set"):
        load_run_config(None, ["data.val_fraction=0"], defaults=DEFAULT_RUN)
    with pytest.raises(ConfigError, match="at least one"):
        load_run_config(None, ["data.validation=[]"], defaults=DEFAULT_RUN)


def test_prepare_shards_with_a_validation_corpus(tmp_path):
    (tmp_path / "train.txt").write_text(TRAIN, encoding="utf-8")
    (tmp_path / "val.txt").write_text(VAL, encoding="utf-8")
    corpus = Corpus.from_paths(tmp_path / "train.txt")
    tok = train_tokenizer(corpus, kind="char", vocab_size=60)
    validation = Corpus.from_paths(tmp_path / "val.txt")
    info = prepare_shards(
        corpus, tok, tmp_path / "s", val_fraction=0.0, workers=0, progress=False,
        validation=validation,
    )  # fmt: skip
    assert info.meta["validation"] == str(tmp_path / "val.txt")
    train, val = ShardSet(tmp_path / "s", "train"), ShardSet(tmp_path / "s", "val")
    assert train.decode(train.document(0)) == TRAIN and train.n_docs == 1
    assert val.decode(val.document(0)) == VAL and val.n_docs == 1
    with pytest.raises(ConfigError, match="val_fraction must be 0"):
        prepare_shards(corpus, tok, tmp_path / "t", val_fraction=0.1, validation=validation)


def test_pretrain_validates_on_the_given_files(tmp_path, capsys):
    (tmp_path / "train.txt").write_text(TRAIN, encoding="utf-8")
    (tmp_path / "val.txt").write_text(VAL, encoding="utf-8")
    run = tmp_path / "run"
    sets = [
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.ffn_size=64",
        "model.max_positions=32",
        "train.steps=2",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.batch_size=2",
        "train.progress=false",
        "train.tensorboard=false",
        "train.sample_tokens=4",
        "data.seq_len=16",
        "data.workers=1",
        'tokenizer.kind="char"',
        f"data.corpus={json.dumps(str(tmp_path / 'train.txt'))}",
        f"data.validation={json.dumps(str(tmp_path / 'val.txt'))}",
        f"train.out_dir={json.dumps(str(run))}",
    ]
    assert main(["pretrain", *[a for s in sets for a in ("--set", s)]]) == 0
    assert "validation:" in capsys.readouterr().out
    val = ShardSet(run / "data", "val")
    assert val.decode(val.document(0)) == VAL
    assert json.loads((run / "data" / "meta.json").read_text())["splits"]["train"]["documents"] == 1
    # the run folder evaluates on the same file: pretrain -> evaluate perplexity
    assert main(["evaluate", "perplexity", str(run), str(tmp_path / "val.txt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == len(VAL) - 1 and result["max_length"] == 32
    # without validation files, val_fraction = 0 is refused with one line
    assert main(["pretrain", "--set", "data.val_fraction=0", "--set", "train.steps=1"]) == 2
    assert "data.validation" in capsys.readouterr().err


def test_data_prepare_command(tmp_path, capsys):
    (tmp_path / "train.txt").write_text(TRAIN, encoding="utf-8")
    (tmp_path / "val.txt").write_text(VAL, encoding="utf-8")
    tok = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(tmp_path / "train.txt"), "--kind", "char",
                 "--vocab-size", "60", "--out", str(tok)]) == 0  # fmt: skip
    out = tmp_path / "shards"
    argv = ["data", "prepare", str(tmp_path / "train.txt"), "--tokenizer", str(tok),
            "--out", str(out), "--validation", str(tmp_path / "val.txt")]  # fmt: skip
    assert main(argv) == 0
    assert ShardSet(out, "val").decode(ShardSet(out, "val").document(0)) == VAL
