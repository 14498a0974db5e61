"""Data-parallel pretraining on two gloo processes (CPU): one config trains the same model on
one or two processes (DDP and FSDP2), a checkpoint continues on another world size, rank 0
alone writes and prints, and an error on one rank ends the whole job with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from launch import launch
from triform.cli import main
from triform.errors import ConfigError
from triform.runs import list_checkpoints
from triform.runtime.distributed import split_batch
from triform.train.metrics import read_metrics

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="needs the gloo backend"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"
STEPS = 10
RUN = """
[model]
preset = "gpt2"
hidden_size = 32
num_layers = 2
num_heads = 2
ffn_size = 64
max_positions = 64
dropout = 0.0
attention_dropout = 0.0

[tokenizer]
path = "{folder}/tokenizer.json"  # trained once by the fixture, shared by every run
kind = "char"
vocab_size = 128

[data]
corpus = "{folder}/text"
shards_dir = "{folder}/shards"
seq_len = 32
val_fraction = 0.2
workers = 1

[objective]
name = "causal-lm"

[train]
steps = 10
batch_size = 8
log_every = 1
eval_every = 5
eval_batches = 3
checkpoint_every = 5
keep_last = 5
sample_tokens = 8
progress = false
tensorboard = false
threads = 1
precision = "fp32"  # the comparisons are to 1e-5 (auto is bf16 on CPUs that have it)

[optim]
lr = 3e-3

[schedule]
kind = "cosine"
warmup_steps = 2
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal-LM run on ~40 KB of real text, with shards and tokenizer built once."""
    folder = tmp_path_factory.mktemp("data")
    if SHAKESPEARE.is_dir():
        text = (SHAKESPEARE / "macbeth.txt").read_text()
    else:
        from pydoc_data.topics import topics

        text = "\n\n".join(topics.values())
    (folder / "text").mkdir()
    for i in range(4):
        (folder / "text" / f"doc{i}.txt").write_text(text[i * 10_000 : (i + 1) * 10_000])
    tokenizer = ["--kind", "char", "--vocab-size", "128", "--family", "gpt2"]
    out = ["--out", str(folder / "tokenizer.json")]
    assert main(["tokenizer", "train", str(folder / "text"), *tokenizer, *out]) == 0
    path = folder / "run.toml"
    path.write_text(RUN.format(folder=folder))
    return path


def _args(config: Path, out: Path, *extra: str, resume: Path | None = None) -> list[str]:
    args = ["pretrain", str(config), "--set", f"train.out_dir={json.dumps(str(out))}"]
    for item in extra:
        args += ["--set", item]
    return args + (["--resume", str(resume)] if resume else [])


def _losses(run: Path, split: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run, split=split)}


def _assert_same_losses(got: Path, expected: Path, steps: range) -> None:
    for split in ("train", "val"):
        a, b = _losses(got, split), _losses(expected, split)
        wanted = [s for s in steps if s in b]
        assert wanted and all(s in a for s in wanted), (split, a, b)
        for step in wanted:
            assert a[step] == pytest.approx(b[step], rel=1e-5), (split, step, a[step], b[step])


@pytest.fixture(scope="module")
def one_process(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same config on one process."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(_args(config, out)) == 0
    return out


def _resume_copy(run: Path, into: Path, step: int) -> Path:
    """A copy of ``run`` as it was when its checkpoint of ``step`` had just been written."""
    shutil.copytree(run, into)
    for folder in list_checkpoints(into):
        if int(folder.name.split("-")[1]) > step:
            shutil.rmtree(folder)
    return into


def test_ddp_on_two_processes_trains_like_one_and_resumes_on_one(
    config: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    args = _args(config, out, 'train.parallel="ddp"', "train.tensorboard=true")
    ranks = launch(args, tmp_path / "logs")
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    _assert_same_losses(out, one_process, range(1, STEPS + 1))

    # Rank 0 alone prints and writes: one summary, one record per step, one event file.
    assert "done: 10 steps" in ranks[0]["out"] and "2 processes x 4" in ranks[0]["out"]
    assert ranks[1]["out"] == "" and ranks[1]["err"] == "", ranks[1]
    assert len(read_metrics(out, split="train")) == STEPS
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(read_metrics(out, split="text")) == 2  # a sample at each evaluation
    state = json.loads((list_checkpoints(out)[0] / "trainer_state.json").read_text())
    assert state["data_position"] == {"samples": 40, "batch_size": 8}

    # The 2-process checkpoint of step 5 continues on one process like the 2-process run.
    resumed = _resume_copy(out, tmp_path / "resumed", 5)
    assert main(_args(config, resumed, resume=resumed)) == 0
    _assert_same_losses(resumed, out, range(6, STEPS + 1))


def test_fsdp_on_two_processes_trains_like_one_and_changes_world_size(
    config: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fsdp"
    ranks = launch(_args(config, out, 'train.parallel="fsdp"'), tmp_path / "logs")
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    _assert_same_losses(out, one_process, range(1, STEPS + 1))
    step5 = list_checkpoints(out)[0]
    assert (step5 / "sharded" / ".metadata").is_file()  # every rank wrote its shards
    assert len(list((step5 / "sharded").glob("*.distcp"))) == 2
    assert not list((out / "checkpoints").glob(".tmp-*"))  # renamed into place
    assert main(["generate", str(out), "--max-new-tokens", "4"]) == 0  # the full export

    # 2 -> 1: the sharded checkpoint continues on one process without FSDP.
    resumed = _resume_copy(out, tmp_path / "two-to-one", 5)
    assert main(_args(config, resumed, resume=resumed)) == 0
    _assert_same_losses(resumed, out, range(6, STEPS + 1))

    # 1 -> 2: a one-process checkpoint continues sharded on two processes.
    grown = _resume_copy(one_process, tmp_path / "one-to-two", 5)
    args = _args(config, grown, 'train.parallel="fsdp"', resume=grown)
    assert [r["rc"] for r in launch(args, tmp_path / "logs2")] == [0, 0]
    _assert_same_losses(grown, one_process, range(6, STEPS + 1))
    assert (list_checkpoints(grown)[-1] / "sharded").is_dir()


def test_an_error_on_one_rank_ends_the_job_in_one_line(config: Path, tmp_path: Path) -> None:
    ranks = launch(_args(config, tmp_path / "run"), tmp_path / "logs", fail_at=3)
    assert ranks[1]["rc"] == 2 and ranks[1]["err"].strip().splitlines() == [
        "triform: error: rank 1: shard file vanished"
    ], ranks[1]
    errors = [line for line in ranks[0]["err"].splitlines() if line.startswith("triform:")]
    assert ranks[0]["rc"] == 1 and errors == [
        "triform: error: another process stopped (its error is above); stopping"
    ], ranks[0]


def test_the_global_batch_must_split_evenly(config: Path, tmp_path: Path, capsys) -> None:
    assert split_batch(64, 2, world=4) == 8
    with pytest.raises(ConfigError, match="batch_size 12 .* 8 process.* 1 accumulation"):
        split_batch(12, 1, world=8)
    args = _args(config, tmp_path, "train.batch_size=6", "train.grad_accum=4")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "train.batch_size 6" in err and len(err.splitlines()) == 1


def test_grad_accum_splits_the_global_batch(config: Path, one_process: Path, tmp_path: Path):
    """Two micro-batches of 4 on one process train like one batch of 8 (and like two
    processes of 4 each): ``grad_accum`` splits the global batch, it does not grow it."""
    assert main(_args(config, tmp_path, "train.grad_accum=2")) == 0
    _assert_same_losses(tmp_path, one_process, range(1, STEPS + 1))


def test_resume_refuses_a_changed_global_batch(config: Path, one_process: Path, tmp_path, capsys):
    run = _resume_copy(one_process, tmp_path / "run", 5)
    assert main(_args(config, run, "train.batch_size=4", resume=run)) == 2
    err = capsys.readouterr().err.strip()
    assert "read 40 samples with train.batch_size 8" in err and len(err.splitlines()) == 1


def test_seq2seq_pair_reader_shares_partition_each_batch():
    from triform.objectives import PairBatches, ParallelCorpus

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 12, (2, 53), generator=generator).tolist()
    corpus = ParallelCorpus(
        [list(range(1, n + 1)) for n in lengths[0]], [[7] * n for n in lengths[1]]
    )

    def rows(batch: dict) -> list[tuple]:
        pairs = zip(*(batch[k] for k in ("input_ids", "attention_mask")), strict=True)
        source = [tuple(r[m.bool()].tolist()) for r, m in pairs]
        pairs = zip(*(batch[k] for k in ("target_ids", "target_mask")), strict=True)
        target = [tuple(r[m.bool()].tolist()) for r, m in pairs]
        return list(zip(source, target, strict=True))

    for shuffle in (True, False):
        whole = PairBatches(corpus, 6, 3, 0, shuffle)
        halves = [PairBatches(corpus, 6, 3, 0, shuffle, rank=r, world=2) for r in (0, 1)]
        assert whole.num_batches == halves[0].num_batches
        for step in (0, 3, whole.num_batches + 1):  # the last: the next epoch
            parts = [rows(h.batch(step)) for h in halves]
            assert parts[0] and parts[1] and parts[0] + parts[1] == rows(whole.batch(step))
    with pytest.raises(ConfigError, match="does not split over 4 processes"):
        PairBatches(corpus, 6, 3, 0, True, rank=0, world=4)


def test_activation_checkpointing_and_bf16_fsdp_parameters(
    config: Path, one_process: Path, tmp_path: Path
) -> None:
    """``train.activation_checkpointing`` trains exactly as without it; with FSDP's bf16
    parameters (fp32 reductions and master weights) the losses stay close to fp32."""
    exact = tmp_path / "checkpointed"
    assert main(_args(config, exact, "train.activation_checkpointing=true")) == 0
    _assert_same_losses(exact, one_process, range(1, STEPS + 1))

    mixed = tmp_path / "bf16"
    args = _args(
        config,
        mixed,
        'train.parallel="fsdp"',
        'train.fsdp_param_dtype="bf16"',
        "train.activation_checkpointing=true",
    )
    assert [r["rc"] for r in launch(args, tmp_path / "logs")] == [0, 0]
    got, expected = _losses(mixed, "train"), _losses(one_process, "train")
    assert got.keys() == expected.keys()
    for step, loss in got.items():
        assert loss != expected[step] and loss == pytest.approx(expected[step], rel=2e-2)


def test_no_parallelism_on_several_processes_is_refused(monkeypatch):
    from torch import nn

    from triform.runtime.distributed import wrap_model

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="'none' on 2 processes would train 2 separate"):
        wrap_model(nn.Linear(2, 2), "none")
