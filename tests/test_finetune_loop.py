"""Fine-tuning runs on the one Trainer, so it has everything pretraining has: a busy run
folder is refused, SIGTERM checkpoints and prints the resume command, the resume is
bit-exact, ``train.max_minutes`` is honoured, FSDP2 runs on two processes, and a tagging
task (a varying number of labelled tokens per example) trains the same model on one
process, in two micro-batches and on two processes (DDP, FSDP2). Through the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from launch import launch
from test_finetune import KEYWORD, WORDS, family_tokenizers, keyword_rows, write_jsonl
from triform.cli import main
from triform.runs import RunLock, latest_checkpoint, list_checkpoints
from triform.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """
[model]
source = "preset:bert-tiny"
tokenizer = "{tokenizer}"
[model.overrides]
hidden_size = 32
num_layers = 2
num_heads = 2
ffn_size = 64
dropout = 0.0
attention_dropout = 0.0
max_positions = 64
[task]
kind = "{kind}"
train = "{train}"
validation = "{validation}"
max_length = 16
{task_extra}
[train]
epochs = 2
batch_size = 8
eval_every = 3
log_every = 1
progress = false
tensorboard = false
threads = 1
precision = "fp32"
[optim]
lr = 3e-3
"""


def _tagging_rows(n: int, seed: int) -> list[dict]:
    """Examples of 3 to 7 words (so a batch's labelled tokens vary) with entity tags."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 7))
        tags = ["B-LOC" if w in ("river", "ocean") else "O" for w in words]
        at = rng.randrange(len(words) - 1)
        words[at : at + 2], tags[at : at + 2] = [KEYWORD, "zebra"], ["B-ANI", "I-ANI"]
        rows.append({"tokens": " ".join(words), "tags": tags})
    return rows


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ft")
    tokenizer = family_tokenizers(folder)["bert"]
    write_jsonl(folder / "train.jsonl", keyword_rows(36, 0))
    write_jsonl(folder / "dev.jsonl", keyword_rows(12, 1))
    write_jsonl(folder / "tags.jsonl", _tagging_rows(30, 2))
    write_jsonl(folder / "tags-dev.jsonl", _tagging_rows(10, 3))
    for kind, train, validation in (
        ("classification", "train", "dev"),
        ("tagging", "tags", "tags-dev"),
    ):
        (folder / f"{kind}.toml").write_text(
            CONFIG.format(
                tokenizer=tokenizer,
                kind=kind,
                train=folder / f"{train}.jsonl",
                validation=folder / f"{validation}.jsonl",
                task_extra="",
            )
        )
    return folder


def _args(config: Path, out: Path, *extra: str) -> list[str]:
    items = [f"train.out_dir={json.dumps(str(out))}", *extra]
    return ["finetune", str(config), *[a for item in items for a in ("--set", item)]]


def _losses(run: Path) -> dict[str, dict[int, float]]:
    return {
        split: {r["step"]: r["loss"] for r in read_metrics(run, split=split)}
        for split in ("train", "val")
    }


def test_a_busy_run_folder_is_refused(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    with RunLock(out):
        assert main(_args(folder / "classification.toml", out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "triform: error:" in err, err
    assert not (out / "best").exists() and not (out / "checkpoints").exists()


def test_sigterm_checkpoints_and_the_resume_is_exact(folder: Path, tmp_path: Path) -> None:
    """A run far longer than the test, signalled after its first logged step, saves a
    checkpoint and prints the resume command; resumed to a few steps past it, it ends
    with the weights of a run that went there uninterrupted."""
    config = folder / "classification.toml"
    common = ["train.eval_every=1000000", "train.checkpoint_every=1000000",
              'schedule.kind="constant"', "schedule.warmup_steps=0"]  # fmt: skip
    cut = tmp_path / "cut"
    code = "import sys; from triform.cli import main; sys.exit(main(sys.argv[1:]))"
    stderr = (tmp_path / "cut.stderr").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", code, *_args(config, cut, "train.epochs=100000", *common)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = cut / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.stat().st_size > 0):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    err = (tmp_path / "cut.stderr").read_text()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM at step" in err and f"--resume {cut}" in err, err
    stopped = int(latest_checkpoint(cut).name.split("-")[1])
    steps = f"train.steps={stopped + 3}"
    assert main([*_args(config, cut, steps, *common), "--resume", str(cut)]) == 0
    whole = tmp_path / "whole"
    assert main(_args(config, whole, steps, *common)) == 0
    one = load_file(latest_checkpoint(whole) / "model.safetensors")
    two = load_file(latest_checkpoint(cut) / "model.safetensors")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_max_minutes_stops_and_checkpoints(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = _args(folder / "classification.toml", out, "train.epochs=100000",
                 "train.max_minutes=0.002", "train.eval_every=1000000")  # fmt: skip
    assert main(args) == 0
    steps = json.loads((out / "results.json").read_text())["steps"]
    assert 0 < steps < 100000 * 5
    assert latest_checkpoint(out).name == f"step-{steps:06d}"


needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs the gloo backend"
)


@needs_gloo
def test_fsdp_fine_tunes_on_two_processes_like_one(folder: Path, tmp_path: Path) -> None:
    config = folder / "classification.toml"
    one = tmp_path / "one"
    assert main(_args(config, one)) == 0
    two = tmp_path / "fsdp"
    ranks = launch(_args(config, two, 'train.parallel="fsdp"'), tmp_path / "logs")
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    a, b = _losses(two), _losses(one)
    for split in ("train", "val"):
        for step, loss in b[split].items():
            assert a[split][step] == pytest.approx(loss, rel=1e-4), (split, step)
    best = load_file(two / "best" / "model.safetensors")
    assert best.keys() == load_file(one / "best" / "model.safetensors").keys()


@needs_gloo
def test_tagging_is_the_same_however_the_batch_is_split(folder: Path, tmp_path: Path) -> None:
    config = folder / "tagging.toml"
    reference = tmp_path / "one"
    assert main(_args(config, reference)) == 0
    expected = _losses(reference)
    splits = {"grad_accum": (1, ["train.grad_accum=2"]), "ddp": (2, ['train.parallel="ddp"']),
              "fsdp": (2, ['train.parallel="fsdp"'])}  # fmt: skip
    for name, (world, extra) in splits.items():
        out = tmp_path / name
        if world == 1:
            assert main(_args(config, out, *extra)) == 0
        else:
            ranks = launch(_args(config, out, *extra), tmp_path / f"logs-{name}")
            assert [r["rc"] for r in ranks] == [0, 0], ranks
        got = _losses(out)
        assert got["train"][1] == pytest.approx(expected["train"][1], rel=1e-5), name
        assert got["train"][3] == pytest.approx(expected["train"][3], rel=1e-4), name
        assert got["val"][3] == pytest.approx(expected["val"][3], rel=1e-4), name


def test_old_train_keys_are_read_with_a_warning(folder: Path, tmp_path: Path, caplog) -> None:
    from triform.finetune.config import load_finetune_config

    config = load_finetune_config(
        folder / "classification.toml", ["train.body_lr=1e-4", 'train.schedule="cosine"']
    )
    assert config.optim.body_lr == 1e-4 and config.schedule.kind == "cosine"
    assert "train.body_lr is now optim.body_lr" in caplog.text
    from triform.errors import ConfigError

    with pytest.raises(ConfigError, match="train.lr and optim.lr are the same key"):
        load_finetune_config(folder / "classification.toml", ["train.lr=1e-4"])
    assert list_checkpoints(tmp_path) == []
