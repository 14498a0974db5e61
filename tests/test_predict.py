"""A fine-tuned run used by every command: ``triform predict`` for each kind (labels with
probabilities, tags per word, answers, values), ``features`` and ``generate`` on the body of a
``best/`` folder, and the fixes that make tasks see text as it is (tagging words in running
text, QA's stride, empty labels, one metric scale)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from test_finetune import (
    KEYWORD,
    WORDS,
    family_tokenizers,
    keyword_rows,
    make_config,
    write_jsonl,
    write_toml,
)
from triform.cli import main
from triform.errors import ConfigError, TriformError
from triform.finetune import finetune, load_finetune_config, load_finetuned
from triform.tokenizers import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return family_tokenizers(tmp_path_factory.mktemp("tok"))


def cli_finetune(tmp_path: Path, preset: str, tokenizer: str, task: dict, **train) -> Path:
    """``triform finetune`` on a TOML file; the run folder."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_toml(
        tmp_path / "ft.toml", make_config(tmp_path, preset, tokenizer, task, **train)
    )
    assert main(["finetune", config]) == 0
    return tmp_path / "run"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_classification_cli(
    tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(64, 0))
    task = {"kind": "classification", "train": train, "validation": train}
    run = cli_finetune(tmp_path, "bert-tiny", toks["bert"], task, epochs=2)
    summary = capsys.readouterr().out.splitlines()[-1]  # states the scale
    assert "best validation accuracy " in summary and "% (step" in summary
    # a CSV with the text in another column: --text names it
    texts = [f"apple {KEYWORD} river", "apple river stone", "green music table"]
    csv = tmp_path / "inputs.csv"
    csv.write_text("id,sentence\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)))
    out = tmp_path / "predictions.jsonl"
    args = ["predict", str(run), "--input", str(csv), "--text", "sentence", "--batch-size", "2"]
    assert main([*args, "--out", str(out)]) == 0
    found = read_jsonl(out)
    assert [r["source"] for r in found] == [f"{csv}:{i}" for i in (2, 3, 4)]
    for record in found:
        probs = record["probabilities"]
        assert list(probs) == ["neg", "pos"] and sum(probs.values()) == pytest.approx(1.0)
        assert record["prediction"] == max(probs, key=probs.get)
        assert record["score"] == pytest.approx(max(probs.values()))
    assert [r["prediction"] for r in found] == load_finetuned(run).predict(texts)
    capsys.readouterr()
    assert main([*args, "--no-progress"]) == 0  # no --out: JSONL on stdout
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == found
    # best/ and final/ are model folders too, with the body's model.json
    for part in ("best", "final"):
        folder = run / part
        assert {
            "model.json",
            "finetune.json",
            "labels.json",
            "tokenizer.json",
            "model.safetensors",
        } <= {p.name for p in folder.iterdir()}
        capsys.readouterr()
        assert main(["predict", str(folder), "--input", str(csv), "--text", "sentence"]) == 0


def test_predict_refuses_bad_output_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    missing_run = str(tmp_path / "no-such-run")  # never reached: --out is checked first
    for out, message in (
        (tmp_path, "is a folder"),
        (tmp_path / "nope" / "p.jsonl", "does not exist"),
    ):
        assert main(["predict", missing_run, "--input", data, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert main(["predict", missing_run, "--input", data]) == 2
    assert "not a fine-tuned model folder" in capsys.readouterr().err


def test_predict_tagging_cli(tmp_path: Path, toks: dict[str, str]) -> None:
    rng = random.Random(5)
    rows = []
    for _ in range(32):
        words = rng.choices(WORDS, k=5)
        tags = ["B-LOC" if w in ("river", "ocean") else "O" for w in words]
        rows.append({"tokens": words, "tags": tags})
    data = write_jsonl(tmp_path / "ner.jsonl", rows)
    task = {"kind": "tagging", "train": data, "validation": data}
    run = cli_finetune(tmp_path, "bert-tiny", toks["bert"], task, epochs=2)
    inputs = write_jsonl(
        tmp_path / "in.jsonl", [{"tokens": ["apple", "river", "stone"]}, {"tokens": "ocean green"}]
    )
    out = tmp_path / "tags.jsonl"
    assert main(["predict", str(run), "--input", inputs, "--out", str(out)]) == 0
    first, second = read_jsonl(out)
    assert first["words"] == ["apple", "river", "stone"] and len(first["prediction"]) == 3
    assert all(0 < p <= 1 for p in first["scores"]) and len(second["prediction"]) == 2
    assert first["prediction"] == load_finetuned(run).predict([["apple", "river", "stone"]])[0]


def test_features_and_generate_on_a_finetuned_folder(
    tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    import torch

    from triform.inference import load_model

    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(16, 0))
    task = {"kind": "classification", "train": train, "validation": train}
    run = cli_finetune(tmp_path / "bert", "bert-tiny", toks["bert"], task, steps=2)
    lines = tmp_path / "texts.txt"
    lines.write_text(f"apple {KEYWORD}\ngreen music table\n")
    out = tmp_path / "feats.npy"
    args = ["features", str(run / "best"), "--input", str(lines), "--out", str(out)]
    assert main([*args, "--pooling", "mean"]) == 0
    feats = np.load(out)
    assert feats.shape == (2, 32)
    body, _ = load_model(run / "best")  # the fine-tuned body, not a fresh one
    tuned = load_finetuned(run / "best").model.body
    for (name, a), b in zip(body.state_dict().items(), tuned.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    # a decoder body generates (its LM head was kept through fine-tuning)
    task = {"kind": "gpt-classification", "train": train}
    run = cli_finetune(tmp_path / "gpt", "gpt-tiny", toks["gpt2"], task, steps=2)
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                str(run / "final"),
                "--prompt",
                "apple",
                "--max-new-tokens",
                "4",
                "--greedy",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("apple")


# ---------------------------------------------------------------------------------------
# Text as it is
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def word_toks() -> dict:
    texts = ["I give apples to the river and they give stones back"] * 40
    return {
        "byte-bpe": train_tokenizer(texts, kind="byte-bpe", vocab_size=300, family="roberta"),
        "unigram": train_tokenizer(texts, kind="unigram", vocab_size=120, family="t5"),
        "wordpiece": train_tokenizer(texts, kind="wordpiece", vocab_size=80, family="bert"),
    }


@pytest.mark.parametrize("kind", ["byte-bpe", "unigram", "wordpiece"])
def test_tagging_encodes_words_as_in_running_text(word_toks: dict, kind: str) -> None:
    from triform.finetune.config import TaskSection
    from triform.finetune.data import Row
    from triform.finetune.tasks import build_task
    from triform.presets import get

    tok = word_toks[kind]
    task = build_task(TaskSection(kind="tagging", train="x"), tok, get("bert-tiny"))
    words = ["I", "give", "apples"]
    row = Row({"tokens": words, "tags": ["O", "B-V", "O"]}, "r")
    task.setup([row])
    (feature,) = task.encode([row], training=True)
    pieces = [tok.id_to_token(i) for i in feature["input_ids"]]
    give = [p for p, w in zip(pieces, feature["word_ids"], strict=True) if w == 1]
    expected = {"byte-bpe": "Ġgive", "unigram": "▁give", "wordpiece": "give"}[kind]
    assert "".join(give) == expected  # the word as the running text "I give apples" has it
    running = tok.encode("I give apples")
    assert feature["input_ids"] == running.ids  # exactly the running text's tokens
    first = feature["word_ids"].index(1)  # the word's tag is on its first sub-token
    assert feature["labels"][first] == task.labels.index("B-V")
    if kind == "wordpiece":  # unchanged: pre-split words give the same tokens
        assert feature["input_ids"] == tok.encode(words, is_pretokenized=True).ids


def test_qa_default_stride_follows_max_length(toks: dict[str, str]) -> None:
    from triform.finetune.tasks import build_task
    from triform.presets import get
    from triform.tokenizers import load_tokenizer

    tree = {
        "model": {"source": "preset:bert-tiny", "tokenizer": "t"},
        "task": {"kind": "qa", "train": "x", "max_length": 64},
    }
    cfg = load_finetune_config(tree=tree)  # stride 32 used to refuse this
    assert cfg.task.stride is None and cfg.task.qa_stride == 16
    task = build_task(cfg.task, load_tokenizer(toks["bert"]), get("bert-tiny"))
    assert task.stride == 16
    tree["task"]["stride"] = 40  # explicit values are still checked
    with pytest.raises(ConfigError, match=r"task.stride must be in \[0, max_length / 2\)"):
        load_finetune_config(tree=tree)


def test_empty_label_names_file_and_line(
    tmp_path: Path, toks: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "train.csv"
    data.write_text("text,label\napple river,pos\ngreen stone,\nwinter,neg\n")
    task = {"kind": "classification", "train": str(data)}
    with pytest.raises(TriformError, match=rf"{data}:3: empty label in column 'label'"):
        finetune(make_config(tmp_path, "bert-tiny", toks["bert"], task))
    config = write_toml(
        tmp_path / "ft.toml", make_config(tmp_path, "bert-tiny", toks["bert"], task)
    )
    assert main(["finetune", config]) == 2
    assert capsys.readouterr().err.strip() == (
        f"triform: error: {data}:3: empty label in column 'label'"
    )


def test_metrics_are_percentages() -> None:
    from triform.finetune.metrics import (
        classification_metrics,
        entity_metrics,
        format_metric,
        generation_metrics,
        regression_metrics,
    )

    cls = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], 2)
    assert cls["accuracy"] == pytest.approx(75.0) and cls["f1"] == pytest.approx(200 / 3)
    assert -1 <= cls["mcc"] <= 1
    tags = entity_metrics([["B-X", "O"]], [["B-X", "O"]])
    assert tags == {"f1": 100.0, "precision": 100.0, "recall": 100.0, "accuracy": 100.0}
    gen = generation_metrics(["a b c", "d e"], ["a b c", "d f"])
    assert gen["exact_match"] == pytest.approx(50.0) and 50 < gen["rouge1"] <= 100
    assert regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])["pearson"] <= 1
    assert format_metric("accuracy", 93.75) == "accuracy 93.75%"
    assert format_metric("pearson", 0.8123) == "pearson 0.8123"
