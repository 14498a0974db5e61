"""Failure paths: a failed resume leaves its run folder as it was; a diverging run stops at
the step it diverged and never saves NaN weights; two runs never share a folder; SIGTERM
saves and resumes exactly; ``kill -9`` at random moments leaves only loadable checkpoints;
OS errors and absurd sizes are one-line errors."""

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
from safetensors.torch import load_file

from triform import presets
from triform.cli import main
from triform.errors import TriformError
from triform.loading import read_model
from triform.models.sizing import check_model_fits
from triform.runs import RunLock, latest_checkpoint, list_checkpoints, write_json

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "gpt-char-shakespeare.toml"
TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.ffn_size=64",
    "model.dropout=0.1",
    "train.batch_size=4",
    "train.eval_batches=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_tokens=0",
    "train.threads=1",
    "data.seq_len=32",
    "data.val_fraction=0.2",
    "data.workers=1",
    "schedule.warmup_steps=1",
]


@pytest.fixture(scope="module")
def corpus(doc_corpus: Path) -> str:
    return str(doc_corpus)


def args_for(out: Path, corpus: str, *extra: str) -> list[str]:
    args = ["pretrain", str(CONFIG)]
    paths = [f"data.corpus={json.dumps(corpus)}", f"train.out_dir={json.dumps(str(out))}"]
    for item in [*TINY, *paths, *extra]:
        args += ["--set", item]
    return args


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_failed_resume_leaves_the_run_folder_as_it_was(
    corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    steps = ["train.steps=2", "train.eval_every=2", "train.checkpoint_every=2"]
    assert main(args_for(run, corpus, *steps)) == 0
    before = snapshot(run)
    capsys.readouterr()
    from triform.tokenizers import save_tokenizer, train_tokenizer

    other = tmp_path / "other.json"
    save_tokenizer(train_tokenizer(["a different text"], kind="char", family="gpt2"), other)
    for change, message in [
        ("model.hidden_size=64", "model.hidden_size is 32 in the run, 64 in this config"),
        (f"tokenizer.path={json.dumps(str(other))}", "tokenizer.json differs"),
    ]:
        assert main([*args_for(run, corpus, *steps, change), "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert snapshot(run) == before
    assert main(["generate", str(run), "--greedy", "--max-new-tokens", "3"]) == 0


def test_a_diverging_run_stops_at_its_step_and_saves_no_nan(
    corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    extra = [
        "train.steps=30",
        "train.log_every=10",
        "train.eval_every=100",
        "train.checkpoint_every=3",
        "train.keep_last=2",
        "optim.lr=1e6",
        "optim.grad_clip=0",
    ]
    assert main(args_for(run, corpus, *extra)) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite at step" in err and "lower optim.lr" in err, err
    bad_step = int(err.split("at step ")[1].split(";")[0])
    saved = list_checkpoints(run)
    for checkpoint in saved:
        step = int(checkpoint.name.split("-")[1])
        assert step < bad_step
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), checkpoint


def test_optim_lr_must_be_finite(corpus: str, tmp_path: Path, capsys) -> None:
    assert main(args_for(tmp_path / "run", corpus, "optim.lr=inf")) == 2
    assert "optim.lr must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_checks_come_before_anything_is_written(corpus: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    for change, message in [
        ("objective.mask_prob=0.2", "unknown key objective.mask_prob"),
        ("data.seq_len=512", "longer than the model's positions"),
        ("train.precision='fp16'", "fp16 needs a CUDA device"),
        # the evaluation-time sample (prompt + new tokens) must fit the 256 positions
        ("train.sample_tokens=300", "train.sample_tokens (300) after the sample prompt's"),
    ]:
        assert main(args_for(run, corpus, change)) == 2
        assert message in capsys.readouterr().err
        assert not run.exists(), change


def test_one_run_per_folder(corpus: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    with RunLock(run):
        assert main(args_for(run, corpus, "train.steps=1")) == 2
    assert f"in use by another run (pid {os.getpid()})" in capsys.readouterr().err
    assert main(args_for(run, corpus, "train.steps=1", "train.eval_every=1")) == 0


def test_resume_from_an_older_checkpoint_needs_force(corpus: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    common = [
        "train.steps=4",
        "train.eval_every=4",
        "train.checkpoint_every=1",
        "train.keep_last=4",
    ]
    assert main(args_for(run, corpus, *common)) == 0
    older = list_checkpoints(run)[1]
    capsys.readouterr()
    assert main([*args_for(run, corpus, *common), "--resume", str(older)]) == 2
    assert "newer than step 2" in capsys.readouterr().err
    assert main([*args_for(run, corpus, *common), "--resume", str(older), "--force"]) == 0
    assert [p.name for p in list_checkpoints(run)] == [
        "step-000001",
        "step-000002",
        "step-000003",
        "step-000004",
    ]
    assert len(list((run / "checkpoints").glob("abandoned-*/step-*"))) == 2
    capsys.readouterr()
    assert main([*args_for(run, corpus, *common), "--resume", str(run)]) == 0
    assert "already reached step 4" in capsys.readouterr().out


def _spawn(out: Path, corpus: str, *extra: str, resume: bool = False) -> subprocess.Popen:
    """``triform pretrain`` in a child process (output in files next to the run)."""
    code = "import sys; from triform.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [*args_for(out, corpus, *extra), *(["--resume", str(out)] if resume else [])]
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.DEVNULL,
        stderr=(out.parent / f"{out.name}.stderr").open("w"),
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_sigterm_saves_a_checkpoint_and_the_resume_is_exact(corpus: str, tmp_path: Path) -> None:
    """The signalled run is far longer than the test (a constant schedule, so that its
    length does not shape the learning rate): it cannot finish before the signal arrives.
    Resumed to a few steps past where it stopped, it ends with the weights of a run that
    went there uninterrupted."""
    common = [
        "train.eval_every=1000000",
        "train.checkpoint_every=1000000",
        "schedule.kind=constant",
        "schedule.warmup_steps=0",
    ]
    cut = tmp_path / "cut"
    process = _spawn(cut, corpus, "train.steps=1000000", *common, "train.log_every=1")
    metrics = cut / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    err = (tmp_path / "cut.stderr").read_text()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM at step" in err and "--resume" in err, err
    assert len(list_checkpoints(cut)) == 1
    assert not list((cut / "checkpoints").glob(".tmp-*"))
    stopped = int(latest_checkpoint(cut).name.split("-")[1])
    assert stopped >= 1
    steps = f"train.steps={stopped + 3}"
    assert main([*args_for(cut, corpus, steps, *common), "--resume", str(cut)]) == 0
    whole = tmp_path / "whole"
    assert main(args_for(whole, corpus, steps, *common)) == 0
    one = load_file(latest_checkpoint(whole) / "model.safetensors")
    two = load_file(latest_checkpoint(cut) / "model.safetensors")
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_kill_9_at_random_moments_leaves_only_loadable_checkpoints(
    corpus: str, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    extra = ["train.eval_every=1000", "train.checkpoint_every=1", "train.keep_last=2"]
    rng = random.Random(0)
    for _ in range(3):
        resume = latest_checkpoint(run) is not None
        process = _spawn(run, corpus, "train.steps=500", *extra, resume=resume)
        _wait_for(lambda: latest_checkpoint(run) is not None)
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        for checkpoint in list_checkpoints(run):
            weights = load_file(checkpoint / "model.safetensors")
            assert weights and all(torch.isfinite(w).all() for w in weights.values())
            json.loads((checkpoint / "trainer_state.json").read_text())
    last = int(latest_checkpoint(run).name.split("-")[1])
    steps = f"train.steps={last + 1}"
    assert main([*args_for(run, corpus, steps, *extra), "--resume", str(run)]) == 0
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
    assert len(list_checkpoints(run)) <= 2
    read_model(run)


def test_os_errors_are_one_line(corpus: str, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(args_for(blocker / "run", corpus, "train.steps=1")) == 2
    err = capsys.readouterr().err
    assert err.startswith("triform: error:") and err.count("\n") == 1 and str(blocker) in err


def test_tokenizer_encode_into_a_closed_pipe(tmp_path: Path) -> None:
    from triform.tokenizers import save_tokenizer, train_tokenizer

    path = tmp_path / "tokenizer.json"
    save_tokenizer(train_tokenizer(["abc def " * 50], kind="char", family="gpt2"), path)
    command = (
        f"{sys.executable} -m triform.cli tokenizer encode {path} {'abc ' * 5000!r} | head -c 10"
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr


def test_absurd_model_sizes_are_refused_before_allocation(tmp_path: Path) -> None:
    with pytest.raises(TriformError, match="hidden_size = 64,000,000 is beyond any model"):
        presets.get("gpt2", hidden_size=64_000_000, num_heads=1)
    huge = presets.get("gpt2", num_layers=200, hidden_size=65_536, num_heads=64, ffn_size=262_144)
    with pytest.raises(TriformError, match="GiB free"):
        check_model_fits(huge)
    folder = tmp_path / "model"
    folder.mkdir()
    write_json(folder / "model.json", huge.to_dict())
    with pytest.raises(TriformError, match="GiB free"):
        read_model(folder)


def test_output_paths_are_checked_before_the_work(tmp_path: Path, capsys) -> None:
    """A folder, or a file in a missing folder, as --out: one line before anything runs."""
    from triform import build_model
    from triform.runs import save_weights
    from triform.tokenizers import save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer(["hello world some text " * 20], kind="char", family="gpt2")
    config = presets.get("gpt-tiny", vocab_size=tokenizer.get_vocab_size())
    model = tmp_path / "model"
    model.mkdir()
    write_json(model / "model.json", config.to_dict())
    save_weights(build_model(config), model / "model.safetensors")
    save_tokenizer(tokenizer, model / "tokenizer.json")
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"input": "hello", "answer": "a", "options": ["a", "b"]}) + "\n")
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe bad \x80\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    for args, message in [
        (["evaluate", "icl", str(model), "--task", str(task), "--out", str(folder)], "is a folder"),
        (["features", str(model), "--input", str(texts), "--out", str(folder / "x" / "f.npy")],
         "does not exist"),
        (["attention", str(model), "--text", "hi", "--out", str(folder)], "is a folder"),
        (["features", str(model), "--input", str(bad), "--out", str(tmp_path / "f.npy")],
         "not UTF-8"),
        (["generate", str(model), "--input", str(bad)], "not UTF-8"),
    ]:  # fmt: skip
        assert main(args) == 2, args
        captured = capsys.readouterr()
        assert message in captured.err and captured.err.count("\n") == 1, captured.err
        assert "0  " not in captured.out  # (the ICL table is never printed first)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_embd": 64_000_000}, "hidden_size = 64,000,000 is beyond any model"),
        ({"n_layer": 1_000_000}, "num_layers = 1,000,000 is beyond any model"),
        ({"n_embd": 1e9}, "hidden_size must be int"),
    ],
)
def test_absurd_huggingface_configs_are_refused_before_allocation(
    tmp_path: Path, change: dict, message: str
) -> None:
    from safetensors.torch import save_file

    from triform.interop import hf

    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 100,
              "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, **change}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({}, str(tmp_path / "model.safetensors"))
    with pytest.raises(TriformError, match=message):
        hf.load(tmp_path)
