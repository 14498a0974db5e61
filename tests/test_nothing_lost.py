"""Nothing lost: each failure a user met, through the CLI. Earlier results survive a re-run
that fails; a folder of one kind never receives another's files; no output replaces an input;
torn lines are repaired before appending; a path the user names must exist; every silent
adjustment is said; temporaries of killed runs are removed on start; an interrupt while the
command starts is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_finetune import family_tokenizers, keyword_rows, make_config, write_jsonl, write_toml
from triform.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src"
PRETRAIN = [
    "model.preset='gpt2'",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.ffn_size=32",
    "model.max_positions=64",
    "tokenizer.kind='char'",
    "tokenizer.vocab_size=96",
    "data.seq_len=16",
    "data.val_fraction=0.25",
    "data.workers=1",
    "objective.name='causal-lm'",
    "train.batch_size=2",
    "train.eval_batches=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_tokens=0",
    "train.threads=1",
    "schedule.warmup_steps=1",
]


def pretrain_args(out: Path, corpus: Path, *extra: str) -> list[str]:
    args = ["pretrain"]
    paths = [f"data.corpus={json.dumps(str(corpus))}", f"train.out_dir={json.dumps(str(out))}"]
    for item in [*PRETRAIN, *paths, *extra]:
        args += ["--set", item]
    return args


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock file aside) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one line the command printed on stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("triform: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("corpus")
    texts = list(topics.values())
    for i in range(4):
        (folder / f"doc{i}.txt").write_text("\n".join(texts[i * 3 : (i + 1) * 3])[:6000])
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """A finished tiny pretraining run (2 steps)."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    steps = ["train.steps=2", "train.eval_every=2", "train.checkpoint_every=2"]
    assert main(pretrain_args(run, corpus, *steps)) == 0
    return run


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return family_tokenizers(tmp_path_factory.mktemp("tok"))


def finetune_toml(folder: Path, toks: dict[str, str], **train) -> str:
    """A tiny classification run on random BERT weights (validation = training rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(folder / "train.jsonl", keyword_rows(16, 0))
    task = {"kind": "classification", "train": data, "validation": data}
    config = make_config(folder, "bert-tiny", toks["bert"], task, **train)
    return write_toml(folder / "ft.toml", config)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, toks: dict[str, str]) -> Path:
    """A finished tiny fine-tuning run (its folder)."""
    folder = tmp_path_factory.mktemp("finetuned")
    assert main(["finetune", finetune_toml(folder, toks)]) == 0
    return folder / "run"


# -- data loss ---------------------------------------------------------------------------------


def test_a_failed_rerun_leaves_the_earlier_model_and_results(
    tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    config = finetune_toml(tmp_path, toks)
    run = tmp_path / "run"
    assert main(["finetune", config]) == 0
    best = snapshot(run / "best")
    results = (run / "results.json").read_bytes()
    before = snapshot(run)
    capsys.readouterr()
    # a re-run is refused without --overwrite, and changes nothing
    assert main(["finetune", config]) == 2
    assert "--overwrite" in error_line(capsys)
    assert snapshot(run) == before
    # with --overwrite, a run that diverges at once keeps the earlier model where it was
    assert main(["finetune", config, "--overwrite", "--set", "optim.lr=1e12"]) == 2
    capsys.readouterr()
    assert snapshot(run / "best") == best
    assert (run / "results.json").read_bytes() == results
    assert Path(json.loads(results)["best_dir"]).is_dir()
    aside = list(run.glob("previous-*"))
    assert len(aside) == 1 and (aside[0] / "checkpoints").is_dir()
    # a run that succeeds moves the earlier results aside only now, next to its checkpoints
    assert main(["finetune", config, "--overwrite"]) == 0
    moved = sorted(run.glob("previous-*"))
    assert any(snapshot(p / "best") == best for p in moved if (p / "best").is_dir())
    assert (run / "best").is_dir() and json.loads((run / "results.json").read_text())


def test_a_finetune_never_writes_into_a_pretraining_run(
    pretrained: Path, tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(pretrained)
    config = finetune_toml(tmp_path, toks)
    out = f"train.out_dir={json.dumps(str(pretrained))}"
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(["finetune", config, "--set", out, *extra]) == 2
        assert "holds a pretraining run" in error_line(capsys)
    assert snapshot(pretrained) == before


def test_predict_never_writes_over_its_input(
    finetuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = tmp_path / "x.csv"
    table.write_text("text,label\napple river,pos\nstone music,neg\n")
    before = table.read_bytes()
    capsys.readouterr()
    args = ["predict", str(finetuned), "--input", str(table), "--no-progress"]
    assert main([*args, "--out", str(table)]) == 2
    assert "also an input" in error_line(capsys)
    link = tmp_path / "link.csv"
    os.link(table, link)  # the same file under another name
    assert main([*args, "--out", str(link), "--overwrite"]) == 2
    assert "also an input" in error_line(capsys)
    assert table.read_bytes() == before
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    assert main([*args, "--out", str(out)]) == 2
    assert "--overwrite" in error_line(capsys)
    assert out.read_text() == "keep me\n"
    assert main([*args, "--out", str(out), "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_convert_never_writes_over_a_run_or_an_earlier_model(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    hf = tmp_path / "hf"
    assert main(["convert", str(pretrained), str(hf), "--to", "hf"]) == 0
    before = snapshot(pretrained)
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert main(["convert", str(hf), str(pretrained), "--to", "triform", *extra]) == 2
        assert "holds a pretraining run" in error_line(capsys)
    assert snapshot(pretrained) == before
    model = tmp_path / "model"
    assert main(["convert", str(hf), str(model), "--to", "triform"]) == 0
    first = snapshot(model)
    capsys.readouterr()
    assert main(["convert", str(hf), str(model), "--to", "triform"]) == 2
    assert "--overwrite" in error_line(capsys)
    assert main(["convert", str(hf), str(model), "--to", "triform", "--overwrite"]) == 0
    aside = list(tmp_path.glob("model.previous-*"))
    assert len(aside) == 1 and snapshot(aside[0]) == first and snapshot(model) == first


SWEEP = """
[model]
preset = "gpt2"
max_positions = 64
dropout = 0.0

[tokenizer]
kind = "char"
vocab_size = 96

[data]
corpus = "{corpus}"
seq_len = 16
val_fraction = 0.25
workers = 1

[objective]
name = "causal-lm"

[train]
batch_size = 2
eval_batches = 1
tensorboard = false
sample_tokens = 0
threads = 1

[sweep]
out_dir = "{out}"
tokens = [64]
models = [{{ num_layers = 1, hidden_size = 8, num_heads = 2 }},
          {{ num_layers = 1, hidden_size = 16, num_heads = 2 }}]
"""


def test_a_torn_results_line_is_dropped_before_the_next_row(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sweep"
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP.format(corpus=corpus, out=out))
    assert main(["scaling", "sweep", str(config), "--no-progress"]) == 0
    results = out / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    assert len(lines) == 2
    results.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-write
    capsys.readouterr()
    assert main(["scaling", "sweep", str(config), "--no-progress"]) == 0
    printed = capsys.readouterr()
    warnings = [line for line in printed.err.splitlines() if "torn" in line]
    assert len(warnings) == 1 and warnings[0].startswith("triform: warning: ")
    assert "done: 2 points" in printed.out
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["id"] for r in rows] == [json.loads(line)["id"] for line in lines]


# -- silent or misleading ----------------------------------------------------------------------


def test_a_named_tokenizer_must_exist(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    typo = tmp_path / "tokenizr.json"
    run = tmp_path / "run"
    args = pretrain_args(run, corpus, "train.steps=1", f"tokenizer.path={json.dumps(str(typo))}")
    assert main(args) == 2
    line = error_line(capsys)
    assert "tokenizer.path" in line and str(typo) in line
    assert not typo.exists() and not run.exists()


def test_a_validation_file_without_labels_stops_the_run(
    tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    config = finetune_toml(tmp_path, toks)
    unlabelled = write_jsonl(tmp_path / "dev.jsonl", [{"text": "apple river"}] * 4)
    assert main(["finetune", config, "--set", f"task.validation={json.dumps(unlabelled)}"]) == 2
    line = error_line(capsys)
    assert unlabelled in line and "'label'" in line
    assert not (tmp_path / "run").exists()


def test_fit_names_a_malformed_line_and_reads_hand_written_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = [
        {"params": n, "tokens": d, "loss": 1.7 + 400 / n**0.34 + 410 / d**0.28}
        for n in (1e5, 3e5, 1e6)
        for d in (1e7, 3e7)
    ]
    results = tmp_path / "results.jsonl"
    lines = [json.dumps(row) + "\n" for row in rows]
    results.write_text("".join(lines[:3]) + "{not json\n" + "".join(lines[3:]))
    args = ["scaling", "fit", str(results), "--bootstrap", "0", "--no-plots", "--starts", "2"]
    assert main(args) == 2
    assert f"{results}:4" in error_line(capsys)
    results.write_text("".join(lines))
    assert main(args) == 0
    assert "6·N·D" in capsys.readouterr().out
    assert json.loads((tmp_path / "fit.json").read_text())["points"] == 6


def test_bad_labels_and_quotes_are_named(
    tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    config = finetune_toml(tmp_path, toks)
    train = tmp_path / "values.csv"
    train.write_text("text,score\napple river,0.5\nstone music,nan\ngreen table,1.0\n")
    task = ["--set", "task.kind='regression'", "--set", "task.label='score'"]
    paths = ["--set", f"task.train={json.dumps(str(train))}", "--set", "task.validation=''"]
    assert main(["finetune", config, *task, *paths]) == 2
    line = error_line(capsys)
    assert f"{train}:3" in line and "finite" in line
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('text,label\napple river,"pos\nstone music,neg\ngreen table,pos\n')
    paths = ["--set", f"task.train={json.dumps(str(quoted))}", "--set", "task.validation=''"]
    assert main(["finetune", config, *paths]) == 2
    line = error_line(capsys)
    assert f"{quoted}:2" in line and "unterminated quote" in line


def test_clamped_lengths_and_token_bounds_are_said(
    pretrained: Path, tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    config = finetune_toml(tmp_path, toks)
    assert main(["finetune", config, "--set", "task.max_length=1000"]) == 0
    err = capsys.readouterr().err
    assert "triform: warning: task.max_length 1000" in err and "64" in err
    texts = tmp_path / "texts.txt"
    texts.write_text("short\n" + "a long line of text " * 10 + "\n")
    out = tmp_path / "feats.npy"
    args = ["features", str(pretrained), "--input", str(texts), "--out", str(out)]
    assert main([*args, "--max-length", "1000"]) == 2
    assert "64 positions" in error_line(capsys)
    assert main(args) == 0
    assert "1 of 2 texts were longer than 64 tokens" in capsys.readouterr().err
    generate = ["generate", str(pretrained), "--prompt", "a", "--greedy"]
    assert main([*generate, "--min-new-tokens", "50", "--max-new-tokens", "5"]) == 2
    assert "--min-new-tokens 50" in error_line(capsys)


# -- untidy after faults -----------------------------------------------------------------------


def test_a_restart_prunes_checkpoints_beyond_keep_last(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    steps = ["train.steps=4", "train.eval_every=4", "train.checkpoint_every=1"]
    assert main(pretrain_args(run, corpus, *steps, "train.keep_last=10")) == 0
    folders = sorted((run / "checkpoints").iterdir())
    assert len(folders) == 4
    for folder in folders[:2]:  # killed while pruning: half-deleted folders
        (folder / "trainer_state.json").unlink()
    restart = [*pretrain_args(run, corpus, *steps, "train.keep_last=2"), "--resume", str(run)]
    assert main(restart) == 0
    assert sorted((run / "checkpoints").iterdir()) == folders[2:]


def test_temporaries_of_killed_runs_are_removed_on_start(
    finetuned: Path, pretrained: Path, tmp_path: Path, toks: dict[str, str]
) -> None:
    dead = 4_000_000  # above Linux's largest pid: a process that cannot exist
    shards = tmp_path / "shards"
    prepare = ["data", "prepare", "--max-bytes", "2000", "--workers", "0", "--out", str(shards)]
    prepare += ["--tokenizer", str(pretrained / "tokenizer.json"), "--no-progress"]
    assert main(prepare) == 0
    (shards / f".tmp-{dead}").mkdir()  # a killed `data prepare`
    (shards / f".tmp-{dead}" / "train.bin").write_bytes(b"\0" * 8)
    assert main(prepare) == 0
    assert not (shards / f".tmp-{dead}").exists()
    # a fine-tune killed while replacing best/: its temporaries go when it is resumed
    run = tmp_path / "ft"
    shutil.copytree(finetuned, run)
    (run / f".tmp-best-{dead}").mkdir()
    shutil.copytree(run / "best", run / f".old-best-{dead}")
    config = finetune_toml(tmp_path / "cfg", toks, out_dir=str(run))
    assert main(["finetune", config, "--resume", str(run)]) == 0
    assert not [p.name for p in run.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_resume_at_a_pretraining_run_writes_nothing_into_it(
    pretrained: Path, tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(pretrained)
    config = finetune_toml(tmp_path, toks)
    capsys.readouterr()
    assert main(["finetune", config, "--resume", str(pretrained)]) == 2
    assert "holds a pretraining run" in error_line(capsys)
    assert snapshot(pretrained) == before


def test_an_interrupt_while_starting_is_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "triform.cli", "models"]
    for delay in (0.6, 0.3, 1.0):
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        if out:  # it had already started and listed the models: try sooner
            continue
        assert child.returncode == 130, err.decode()
        assert err.decode().strip() == "triform: interrupted"
        return
    pytest.skip("the command started faster than the interrupt could be sent")


def test_an_unwritable_tokenizer_output_is_one_line(capsys: pytest.CaptureFixture) -> None:
    target = Path("/sys/tokenizer.json")  # sysfs: no file can be created there, root or not
    if not Path("/sys").is_dir():
        pytest.skip("needs Linux's /sys as a folder no file can be created in")
    args = ["tokenizer", "train", "--max-bytes", "2000", "--kind", "char", "--vocab-size", "64"]
    assert main([*args, "--out", str(target)]) == 2
    line = error_line(capsys)
    assert "not writable" in line and "/sys" in line
