"""`task.metric = "file.py:function"`: a metric of your own, computed at every evaluation,
logged, and choosing `best/` (in its direction); its failures are one line, before step 1."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from triform.cli import main
from triform.tokenizers import save_tokenizer, train_tokenizer
from triform.train.metrics import read_metrics

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "table", "window"]
METRICS = '''
def agreement(predictions, references):
    """The share of predictions equal to their reference (accuracy as a fraction)."""
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def counts(predictions, references):
    hits = sum(p == r for p, r in zip(predictions, references))
    return {"hits": hits, "misses": len(references) - hits}


def label_names(predictions, references):
    assert all(isinstance(r, str) for r in references), references
    return 1.0


def broken(predictions, references):
    raise ValueError("boom")


def wordy(predictions, references):
    return "high"


def accuracy(predictions, references):
    return 0.5


not_callable = 3
'''


@pytest.fixture(scope="module")
def task_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A keyword task (is "zebra" among the words?), a tokenizer and the metrics file."""
    folder = tmp_path_factory.mktemp("custom-metric")
    rng = random.Random(0)
    for name, n in (("train", 48), ("dev", 16)):
        rows = []
        for _ in range(n):
            words = rng.choices(WORDS, k=5)
            label = rng.choice(["pos", "neg"])
            if label == "pos":
                words[rng.randrange(5)] = "zebra"
            rows.append({"text": " ".join(words), "label": label})
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tokenizer([" ".join([*WORDS, "zebra"])] * 20, kind="wordpiece", vocab_size=80)
    save_tokenizer(tok, folder / "tokenizer.json")
    (folder / "my_metrics.py").write_text(METRICS)
    return folder


def _config(folder: Path, out: Path, **task: str) -> Path:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in task.items())
    text = (
        '[model]\nsource = "preset:bert-tiny"\ntokenizer = "tokenizer.json"\n'
        "overrides = {hidden_size = 32, num_heads = 2, ffn_size = 64, num_layers = 1}\n"
        '[task]\nkind = "classification"\ntrain = "train.jsonl"\nvalidation = "dev.jsonl"\n'
        f"{extra}"
        f"[train]\nout_dir = {json.dumps(str(out))}\nepochs = 4\nbatch_size = 8\n"
        "progress = false\ntensorboard = false\nthreads = 1\nlog_every = 6\n"
        "[optim]\nlr = 1e-3\n"
    )
    path = folder / f"{out.name}.toml"
    path.write_text(text)
    return path


def test_a_function_of_yours_is_logged_and_picks_best(task_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = _config(task_files, out, metric="my_metrics.py:agreement")  # relative to config
    assert main(["finetune", str(config)]) == 0
    evaluations = read_metrics(out, split="val")
    assert len(evaluations) == 4
    for record in evaluations:  # beside the built-ins, and it agrees with accuracy
        assert record["agreement"] == pytest.approx(record["accuracy"] / 100)
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "agreement"
    best = max(evaluations, key=lambda r: r["agreement"])  # the first of equals
    assert results["best_step"] == best["step"]
    assert results["best_value"] == pytest.approx(best["agreement"])
    saved = json.loads((out / "best" / "finetune.json").read_text())
    assert saved["step"] == best["step"]


def test_a_dict_key_in_its_direction_picks_best(task_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "run-min"
    config = _config(
        task_files, out, metric="my_metrics.py:counts", metric_key="misses", metric_mode="min"
    )
    assert main(["finetune", str(config)]) == 0
    evaluations = read_metrics(out, split="val")
    assert all("hits" in r and "misses" in r for r in evaluations)
    results = json.loads((out / "results.json").read_text())
    best = min(evaluations, key=lambda r: r["misses"])
    assert results["metric"] == "misses" and results["best_step"] == best["step"]
    # references and predictions arrive as label names, as `triform predict` shows them
    config = _config(task_files, tmp_path / "names", metric="my_metrics.py:label_names")
    assert main(["finetune", str(config), "--set", "train.epochs=1"]) == 0


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("no_such_module:f", "task.metric 'no_such_module:f': no module 'no_such_module'"),
        ("missing.py:f", "no file"),
        ("my_metrics.py:nothing", "has no 'nothing'"),
        ("my_metrics.py:not_callable", "not_callable is not callable"),
        ("my_metrics.py:broken", "raised ValueError: boom"),
        ("my_metrics.py:wordy", "returned 'high', not a number or a dict of numbers"),
        ("my_metrics.py:accuracy", "reports 'accuracy', a built-in metric"),
    ],
)
def test_a_failing_metric_is_one_line_before_step_one(
    metric: str, expected: str, task_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["finetune", str(_config(task_files, out, metric=metric))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err
    assert not read_metrics(out)  # no step was taken
