"""One config trains the same model however its global batch is split: on one process, in
two micro-batches (``train.grad_accum = 2``), and on two processes under DDP and FSDP2 —
for objectives that draw at random and have a varying number of labelled tokens (MLM on a
preset whose pair head it does not use, T5's span corruption) and for a fine-tuning kind
with a varying number of labelled tokens (tagging). Through the CLI, on tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist

from launch import launch
from triform.cli import main
from triform.train.metrics import read_metrics

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="needs the gloo backend"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"
SPLITS = {
    "grad_accum": (1, ["train.grad_accum=2"]),
    "ddp": (2, ['train.parallel="ddp"']),
    "fsdp": (2, ['train.parallel="fsdp"']),
}
PRETRAINING = """
[model]
preset = "{preset}"
hidden_size = 32
num_layers = 2
num_heads = 2
ffn_size = 64
max_positions = 64
dropout = 0.0
attention_dropout = 0.0

[tokenizer]
kind = "bpe"  # trained alike by every run (HF's WordPiece and Unigram trainers are not)
vocab_size = 300

[data]
corpus = "{folder}/text"
seq_len = 32
val_fraction = 0.2
workers = 1

[objective]
name = "{objective}"

[train]
steps = 3
batch_size = 8
log_every = 1
eval_every = 3
eval_batches = 2
checkpoint_every = 3
progress = false
tensorboard = false
threads = 1
precision = "fp32"

[optim]
lr = 3e-3

[schedule]
warmup_steps = 1
"""


def _text() -> str:
    if SHAKESPEARE.is_dir():
        return (SHAKESPEARE / "macbeth.txt").read_text()[:40_000]
    from pydoc_data.topics import topics

    return "\n\n".join(topics.values())[:40_000]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "text").mkdir()
    text = _text()
    for i in range(4):
        (folder / "text" / f"doc{i}.txt").write_text(text[i * 10_000 : (i + 1) * 10_000])
    return folder


def _losses(run: Path) -> dict[str, dict[int, float]]:
    return {
        split: {r["step"]: r["loss"] for r in read_metrics(run, split=split)}
        for split in ("train", "val")
    }


def _assert_same(got: Path, expected: Path) -> None:
    a, b = _losses(got), _losses(expected)
    assert a["train"][1] == pytest.approx(b["train"][1], rel=1e-5), (a, b)
    assert a["train"][3] == pytest.approx(b["train"][3], rel=1e-4), (a, b)
    assert a["val"][3] == pytest.approx(b["val"][3], rel=1e-4), (a, b)


def _run(args: list[str], world: int, logs: Path) -> None:
    if world == 1:
        assert main(args) == 0
    else:
        ranks = launch(args, logs)
        assert [r["rc"] for r in ranks] == [0, 0], ranks


@pytest.mark.parametrize(
    ("preset", "objective"),
    [("bert-base", "mlm"), ("t5-small", "span-corruption")],
    ids=["mlm-unused-pair-head", "span-corruption"],
)
def test_pretraining_is_the_same_however_the_batch_is_split(
    corpus: Path, tmp_path: Path, preset: str, objective: str
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(PRETRAINING.format(preset=preset, objective=objective, folder=corpus))

    def args(out: Path, *extra: str) -> list[str]:
        items = [f"train.out_dir={json.dumps(str(out))}", *extra]
        return ["pretrain", str(config), *[a for item in items for a in ("--set", item)]]

    reference = tmp_path / "one"
    assert main(args(reference)) == 0
    for name, (world, extra) in SPLITS.items():
        out = tmp_path / name
        _run(args(out, *extra), world, tmp_path / f"logs-{name}")
        _assert_same(out, reference)


def test_a_two_process_mlm_run_resumes_on_one_process(corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    run = PRETRAINING.format(preset="bert-base", objective="mlm", folder=corpus)
    run = run.replace("steps = 3", "steps = 4").replace(
        "checkpoint_every = 3", "checkpoint_every = 2"
    )
    config.write_text(run + "total_steps = 4  # the cut run's schedule is the whole run's\n")

    def args(out: Path, *extra: str) -> list[str]:
        items = [f"train.out_dir={json.dumps(str(out))}", *extra]
        return ["pretrain", str(config), *[a for item in items for a in ("--set", item)]]

    whole = tmp_path / "whole"
    _run(args(whole), 2, tmp_path / "logs-whole")
    cut = tmp_path / "cut"
    _run(args(cut, "train.steps=2"), 2, tmp_path / "logs-cut")
    assert main([*args(cut), "--resume", str(cut)]) == 0
    a, b = _losses(cut), _losses(whole)
    for step in (3, 4):
        assert a["train"][step] == pytest.approx(b["train"][step], rel=1e-5), (a, b)
