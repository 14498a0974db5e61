"""Honest validation: an evaluation scores windows spread evenly across the whole validation
split (or every window, ``train.eval_batches = "all"``) and says which; the first windows of
a split are not the split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from triform.cli import main
from triform.commands.pretrain import DEFAULT_RUN
from triform.data.readers import CausalWindows, evaluation_samples
from triform.data.shards import ShardSet
from triform.errors import ConfigError
from triform.loading import load_model
from triform.train.metrics import read_metrics
from triform.train.run_config import load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "gpt-char-shakespeare.toml"
SEQ_LEN, BATCH, EVAL_BATCHES = 32, 8, 8  # the config's eval_batches: 64 windows
TINY = [
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.ffn_size=64",
    "model.dropout=0.0",
    "model.attention_dropout=0.0",
    f"train.batch_size={BATCH}",
    "train.steps=80",
    "train.eval_every=80",
    "train.checkpoint_every=80",
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_tokens=0",
    "train.threads=1",
    'train.precision="fp32"',
    "optim.lr=3e-3",
    f"data.seq_len={SEQ_LEN}",
    "data.workers=1",
    "data.val_fraction=0.0",
    "schedule.warmup_steps=3",
]


def test_evaluation_samples_spread_over_the_split():
    assert evaluation_samples(10).tolist() == list(range(10))
    assert evaluation_samples(10, 25).tolist() == list(range(10))  # more than there are
    assert evaluation_samples(100, 4).tolist() == [12, 37, 62, 87]  # the middle of each part
    spread = evaluation_samples(1003, 64)
    assert len(set(spread.tolist())) == 64 and (np.diff(spread) > 0).all()
    assert spread[0] < 1003 / 64 and spread[-1] > 1003 - 1003 / 64
    with pytest.raises(ConfigError):
        evaluation_samples(10, 0)


def test_eval_batches_is_a_count_or_all():
    assert load_run_config(None, ['train.eval_batches="all"'], DEFAULT_RUN).train.eval_batches
    for bad in ("0", "-2", '"some"', "1.5"):
        with pytest.raises(ConfigError, match="train.eval_batches") as error:
            load_run_config(None, [f"train.eval_batches={bad}"], DEFAULT_RUN)
        assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus of two kinds of text, and a validation file whose first half is all one
    (a repeated verse: easy once learnt) and whose second half is all the other (random
    letters: as hard as ever)."""
    folder = tmp_path_factory.mktemp("halves")
    verse = "shall i compare thee to a summers day? thou art more lovely and more temperate.\n"
    rng = random.Random(0)

    def noise(n: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz \n") for _ in range(n))

    (folder / "train").mkdir()
    (folder / "train" / "verse.txt").write_text(verse * 150)
    (folder / "train" / "noise.txt").write_text(noise(12_000))
    (folder / "val.txt").write_text(verse * 130 + noise(10_400))
    return folder


def _args(out: Path, data: Path, *extra: str) -> list[str]:
    paths = [
        f"data.corpus={json.dumps(str(data / 'train'))}",
        f"data.validation={json.dumps(str(data / 'val.txt'))}",
        f"data.shards_dir={json.dumps(str(out.parent / 'shards'))}",
        f"train.out_dir={json.dumps(str(out))}",
    ]
    args = ["pretrain", str(CONFIG)]
    for item in [*TINY, *paths, *extra]:
        args += ["--set", item]
    return args


def _window_losses(run: Path, shards: Path) -> torch.Tensor:
    """The saved model's mean loss on each window of the validation split, computed here
    (not by the run's evaluation)."""
    model, tokenizer = load_model(run)
    model.eval()
    val = ShardSet(shards, split="val", tokenizer=tokenizer)
    reader = CausalWindows(val, SEQ_LEN, 1, shuffle=False)
    windows = reader.read(np.arange(reader.items_per_epoch))["input_ids"]  # (M, L + 1)
    with torch.no_grad():
        logits = torch.cat([model(chunk[:, :-1]).logits for chunk in windows.split(64)])
    nll = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="none")
    return nll.view(len(windows), -1).mean(1)  # (M,)


def test_the_validation_loss_is_the_whole_splits(halves: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(_args(out, halves)) == 0
    printed = capsys.readouterr().out
    reported = read_metrics(out, split="val")[-1]
    losses = _window_losses(out, tmp_path / "shards")
    total = len(losses)
    read = EVAL_BATCHES * BATCH
    assert reported["eval_windows"] == read and reported["split_windows"] == total > 10 * read
    line = f"validation loss over {read} of {total} windows, spread evenly across the split"
    assert line in printed.splitlines()

    whole, first = losses.mean().item(), losses[:read].mean().item()
    assert reported["loss"] == pytest.approx(whole, rel=0.02)
    # the first windows (the old rule) are the easy half alone: far from the split's loss
    assert abs(first - whole) > 0.2 * whole
    # the rows evaluated are the spread ones, scored as here
    spread = losses[evaluation_samples(total, read)].mean().item()
    assert reported["loss"] == pytest.approx(spread, rel=1e-4)

    # eval_batches = "all": every window (the same training, so the same model)
    every = tmp_path / "every"
    tokenizer = f"tokenizer.path={json.dumps(str(out / 'tokenizer.json'))}"  # the first run's
    assert main(_args(every, halves, 'train.eval_batches="all"', tokenizer)) == 0
    assert f"validation loss over the whole split ({total} windows)" in capsys.readouterr().out
    reported = read_metrics(every, split="val")[-1]
    assert reported["eval_windows"] == reported["split_windows"] == total
    assert reported["loss"] == pytest.approx(whole, rel=1e-4)
