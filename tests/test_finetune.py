"""Fine-tuning (`triform finetune`, `triform.finetune`): every task kind end to end on tiny
models and synthetic data, plus the pieces that are easy to get subtly wrong (sub-word label
alignment, QA windows, GPT-1 layouts, the auxiliary LM loss, the two learning rates)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from triform.cli import main
from triform.errors import TriformError
from triform.finetune import finetune, load_finetune_config, load_finetuned
from triform.finetune.config import FinetuneConfig
from triform.finetune.data import read_rows
from triform.tokenizers import save_tokenizer, train_tokenizer

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "music",
    "table",
    "window",
    "garden",
    "silver",
    "paper",
    "candle",
    "forest",
    "bridge",
    "ocean",
    "winter",
]
KEYWORD = "zebra"
TINY = {"hidden_size": 32, "num_heads": 2, "ffn_size": 64, "num_layers": 2, "max_positions": 64,
        "dropout": 0.0, "attention_dropout": 0.0}  # fmt: skip
QUIET = {"progress": False, "tensorboard": False, "threads": 1, "log_every": 4}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def keyword_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Six random words; the label says whether the keyword is among them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=6)
        label = rng.choice(["pos", "neg"])
        if label == "pos":
            words[rng.randrange(6)] = KEYWORD
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tokenizers of four families, trained on the word list (some words split)."""
    folder = tmp_path_factory.mktemp("tok")
    texts = [" ".join([*WORDS, KEYWORD, "the", "a", "is", "of"])] * 30
    kinds = {"bert": ("wordpiece", 120), "gpt2": ("byte-bpe", 300), "t5": ("unigram", 180),
             "bart": ("bpe", 120)}  # fmt: skip
    paths = {}
    for family, (kind, size) in kinds.items():
        tok = train_tokenizer(texts, kind=kind, vocab_size=size, family=family)
        paths[family] = str(save_tokenizer(tok, folder / f"{family}.json"))
    return paths


def make_config(
    tmp_path: Path, preset: str, tokenizer: str, task: dict[str, Any], **train: Any
) -> FinetuneConfig:
    tree = {
        "model": {"source": f"preset:{preset}", "tokenizer": tokenizer, "overrides": dict(TINY)},
        "task": {"max_length": 24, **task},
        "train": {
            "out_dir": str(tmp_path / "run"),
            "epochs": 1,
            "batch_size": 8,
            "lr": 1e-3,
            **QUIET,
            **train,
        },  # fmt: skip
    }
    return load_finetune_config(tree=tree)


# ---------------------------------------------------------------------------------------
# Classification, pairs, regression
# ---------------------------------------------------------------------------------------


def test_keyword_classification_learns(tmp_path: Path, toks: dict[str, str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(256, 0))
    val = write_jsonl(tmp_path / "val.jsonl", keyword_rows(64, 1))
    test = write_jsonl(tmp_path / "test.jsonl", keyword_rows(16, 2))
    task = {"kind": "classification", "train": train, "validation": val, "test": test}
    result = finetune(make_config(tmp_path, "bert-tiny", toks["bert"], task, epochs=4, lr=2e-3))
    assert result.metric == "accuracy" and result.best_value >= 0.9
    assert set(result.validation) == {"accuracy", "f1", "mcc", "loss"}
    assert result.test is not None and result.test["accuracy"] >= 0.8
    run = tmp_path / "run"
    saved = json.loads((run / "results.json").read_text())
    assert saved["best_step"] == result.best_step and saved["metric"] == "accuracy"
    assert json.loads((run / "best" / "labels.json").read_text()) == ["neg", "pos"]
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 16

    model, tokenizer, labels = ft = load_finetuned(run)  # the run folder means best/
    assert labels == ["neg", "pos"] and ft.step == result.best_step
    assert ft.predict([f"apple {KEYWORD} river", "apple river stone"]) == ["pos", "neg"]


def test_pair_classification_and_regression_run(tmp_path: Path, toks: dict[str, str]) -> None:
    rng = random.Random(3)
    pairs = []
    for _ in range(24):
        a, b = " ".join(rng.choices(WORDS, k=3)), " ".join(rng.choices(WORDS, k=3))
        same = rng.random() < 0.5
        pairs.append({"s1": a, "s2": a if same else b, "y": int(same), "score": 5.0 * same})
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    task = {"kind": "pair-classification", "train": data, "validation": data, "text": "s1",
            "text_pair": "s2", "label": "y", "metric": "f1"}  # fmt: skip
    result = finetune(make_config(tmp_path, "roberta-tiny", toks["bart"], task))
    assert result.metric == "f1" and result.best_value is not None
    ft = load_finetuned(result.best_dir)
    assert ft.labels == ["0", "1"] and ft.predict([("apple", "apple")])[0] in ("0", "1")

    task = {"kind": "regression", "train": data, "validation": data, "text": "s1",
            "text_pair": "s2", "label": "score"}  # fmt: skip
    result = finetune(make_config(tmp_path, "gpt2-tiny", toks["gpt2"], task, epochs=2))
    assert set(result.validation) == {"pearson", "spearman", "mse", "loss"}
    assert isinstance(load_finetuned(result.best_dir).predict([("a", "b")])[0], float)


def test_body_and_head_learning_rates(tmp_path: Path, toks: dict[str, str]) -> None:
    from triform.finetune.trainer import Finetuner

    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(8, 0))
    cfg = make_config(tmp_path, "bert-tiny", toks["bert"], {"kind": "classification",
                      "train": train}, lr=1e-3, body_lr=1e-5, warmup_steps=0)  # fmt: skip
    run = Finetuner(cfg)
    groups = {g["group"]: g for g in run.optimizer.param_groups}
    assert set(groups) == {"body/decay", "body/no_decay", "head/decay", "head/no_decay"}
    assert groups["body/decay"]["lr"] == pytest.approx(1e-5)
    assert groups["head/decay"]["lr"] == pytest.approx(1e-3)
    assert groups["head/no_decay"]["weight_decay"] == 0.0
    head = {id(p) for p in run.model.head.parameters()}
    in_head = {id(p) for g in run.optimizer.param_groups if g["group"].startswith("head")
               for p in g["params"]}  # fmt: skip
    assert in_head == head
    total = sum(len(g["params"]) for g in run.optimizer.param_groups)
    assert total == len(list(run.model.parameters()))  # every parameter is trained


def test_best_checkpoint_is_kept(tmp_path: Path, toks: dict[str, str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(32, 0))
    val = write_jsonl(tmp_path / "val.jsonl", keyword_rows(16, 1))
    task = {"kind": "classification", "train": train, "validation": val, "metric": "loss"}
    result = finetune(make_config(tmp_path, "bert-tiny", toks["bert"], task, steps=12,
                                  eval_every=3, lr=1e-2))  # fmt: skip
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()) if r["split"] == "val"]  # fmt: skip
    assert [r["step"] for r in evals] == [3, 6, 9, 12]
    best = min(evals, key=lambda r: r["loss"])
    assert result.best_step == best["step"] and result.best_value == pytest.approx(best["loss"])
    saved = json.loads((tmp_path / "run" / "best" / "finetune.json").read_text())
    assert saved["step"] == best["step"]
    assert json.loads((tmp_path / "run" / "final" / "finetune.json").read_text())["step"] == 12


def test_bad_config_is_one_line_exit_2(tmp_path: Path, toks: dict[str, str], capsys) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(8, 0))
    config = tmp_path / "ft.toml"
    config.write_text(
        f'[model]\nsource = "preset:bert-tiny"\ntokenizer = "{toks["bert"]}"\n'
        f'[task]\nkind = "classification"\ntrain = "{train}"\n'
        f'[train]\nout_dir = "{tmp_path / "run"}"\nprogress = false\ntensorboard = false\n'
    )
    cases = {
        "task.kind=sentiment": "task.kind must be one of",
        "train.lr=-1": "train.lr must be positive",
        "task.metric=bleu": "task.metric for classification must be one of",
        "train.nope=1": "unknown key train.nope",
        "model.source=missing/dir": "no such folder",
        f"task.train={json.dumps(str(tmp_path / 'none.csv'))}": "data file not found",
    }
    for override, message in cases.items():
        assert main(["finetune", str(config), "--set", override]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_data_errors_name_file_and_line(tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text('text,label\n"a b",pos\n"c d",neg,extra\n')
    with pytest.raises(TriformError, match=r"bad.csv:3: expected 2 fields"):
        read_rows(bad_csv)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "a"}\n\n{"text": \n')
    with pytest.raises(TriformError, match=r"bad.jsonl:3: malformed JSON"):
        read_rows(bad_jsonl)
    tsv = tmp_path / "ok.tsv"
    tsv.write_text('sentence\tlabel\n"quoted" text\t1\n')
    (row,) = read_rows(tsv)
    assert row.text("sentence") == '"quoted" text' and row.integer("label") == 1
    with pytest.raises(TriformError, match=r"ok.tsv:2: missing column 'text'"):
        row.text("text")
