"""``train.progress = false``: no progress bars (training or tokenizing), but the validation
lines still reach the console; the form-mismatch error reads "a decoder" / "an encoder"."""

from __future__ import annotations

import json

import pytest

from triform.commands.pretrain import DEFAULT_RUN
from triform.errors import ConfigError
from triform.tokenizers import train_tokenizer
from triform.train.metrics import MetricsLogger
from triform.train.run_config import load_run_config
from triform.train.setup import prepare_data


def test_validation_lines_without_a_progress_bar(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, total_steps=4, progress=False, tensorboard=False)
    logger.log(2, {"loss": 1.5, "lr": 1e-3})
    logger.log(2, {"loss": 1.25, "perplexity": 3.4903}, split="val")
    logger.close()
    captured = capsys.readouterr()
    assert captured.out == "step 2 val: loss 1.25, perplexity 3.49\n"  # train steps: silent
    assert captured.err == ""
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["split"] for line in lines] == ["train", "val"]


@pytest.mark.parametrize("progress", [False, True])
def test_tokenizing_bar_follows_train_progress(tmp_path, capsys, progress):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text to tokenize\n\n" * 200, encoding="utf-8")
    config = load_run_config(
        None,
        [
            f"data.corpus={json.dumps(str(corpus))}",
            "data.val_fraction=0.1",
            "data.workers=1",
            f"train.progress={str(progress).lower()}",
        ],
        defaults=DEFAULT_RUN,
    )
    tokenizer = train_tokenizer([corpus.read_text()], kind="char", vocab_size=40)
    prepare_data(config, tokenizer, tmp_path / "run")
    assert ("tokenizing" in capsys.readouterr().err) is progress


def test_form_mismatch_reads_well():
    with pytest.raises(
        ConfigError, match="trains an encoder model, but model gpt2-tiny is a decoder"
    ):
        load_run_config(
            None, ['model.preset="gpt2-tiny"', 'objective.name="mlm"'], defaults=DEFAULT_RUN
        )
    with pytest.raises(
        ConfigError, match="trains a decoder model, but model bert-tiny is an encoder"
    ):
        load_run_config(None, ['model.preset="bert-tiny"'], defaults=DEFAULT_RUN)
