"""Fine-tuning (`triform finetune`, `triform.finetune`): every task kind end to end on tiny
models and synthetic data, plus the pieces that are easy to get subtly wrong (sub-word label
alignment, QA windows, GPT-1 layouts, the auxiliary LM loss, the two learning rates)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

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


def toml_value(value: Any) -> str:
    """A TOML literal (inline table for a dict; JSON spells the rest the TOML way)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write_toml(path: Path, config: FinetuneConfig) -> str:
    """``config`` as a fine-tuning TOML file (``None`` values left out)."""
    lines = []
    for section, table in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
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
    return family_tokenizers(tmp_path_factory.mktemp("tok"))


def family_tokenizers(folder: Path) -> dict[str, str]:
    """Tokenizers of four families, trained on the word list (some words split), saved in
    ``folder``: family -> tokenizer.json path."""
    texts = [" ".join([*WORDS, KEYWORD, "the", "a", "is", "of", "copy:", "reverse:"])] * 30
    kinds = {"bert": ("wordpiece", 120), "gpt2": ("byte-bpe", 300), "t5": ("unigram", 180),
             "bart": ("bpe", 120)}  # fmt: skip
    paths = {}
    for family, (kind, size) in kinds.items():
        tok = train_tokenizer(texts, kind=kind, vocab_size=size, family=family)
        paths[family] = str(save_tokenizer(tok, folder / f"{family}.json"))
    return paths


def make_config(
    tmp_path: Path,
    preset: str,
    tokenizer: str,
    task: dict[str, Any],
    model: dict[str, Any] | None = None,
    **train: Any,
) -> FinetuneConfig:
    """A tiny run: ``preset`` at TINY size (or the ``model`` section given), quiet; the
    keyword arguments go to ``[train]``, or to ``[optim]`` / ``[schedule]`` for theirs."""
    moved = {"lr": "optim", "body_lr": "optim", "weight_decay": "optim", "grad_clip": "optim",
             "warmup_steps": "schedule", "warmup_ratio": "schedule"}  # fmt: skip
    sections: dict[str, dict[str, Any]] = {"optim": {"lr": 1e-3}, "schedule": {}}
    for key in [k for k in train if k in moved]:
        sections[moved[key]][key] = train.pop(key)
    tree = {
        "model": model
        or {"source": f"preset:{preset}", "tokenizer": tokenizer, "overrides": dict(TINY)},
        "task": {"max_length": 24, **task},
        "train": {
            "out_dir": str(tmp_path / "run"),
            "epochs": 1,
            "batch_size": 8,
            **QUIET,
            **train,
        },  # fmt: skip
        **sections,
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
    cfg = make_config(tmp_path, "bert-tiny", toks["bert"], task, epochs=3, batch_size=16, lr=2e-3)
    result = finetune(cfg)  # 48 steps
    assert result.metric == "accuracy" and result.best_value >= 90.0  # percent
    assert set(result.validation) == {"accuracy", "f1", "mcc", "loss"}
    assert result.test is not None and result.test["accuracy"] >= 80.0
    run = tmp_path / "run"
    saved = json.loads((run / "results.json").read_text())
    assert saved["best_step"] == result.best_step and saved["metric"] == "accuracy"
    assert saved["trainable_parameters"] == saved["parameters"] > 0  # everything trains
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
    config = make_config(tmp_path, "gpt2-tiny", toks["gpt2"], task, epochs=2)
    result = finetune(config, overwrite=True)  # the same folder: the earlier run moves aside
    assert set(result.validation) == {"pearson", "spearman", "mse", "loss"}
    assert isinstance(load_finetuned(result.best_dir).predict([("a", "b")])[0], float)

    # an encoder-decoder classifies BART's way: the text through both, the last decoder state
    task = {"kind": "classification", "train": data, "validation": data, "text": "s1",
            "label": "y"}  # fmt: skip
    result = finetune(make_config(tmp_path, "bart-tiny", toks["bart"], task), overwrite=True)
    assert set(result.validation) == {"accuracy", "f1", "mcc", "loss"}


def test_body_and_head_learning_rates(tmp_path: Path, toks: dict[str, str]) -> None:
    from triform.finetune.trainer import FinetuneRun
    from triform.train.optim import build_optimizer

    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(8, 0))
    cfg = make_config(tmp_path, "bert-tiny", toks["bert"], {"kind": "classification",
                      "train": train}, lr=1e-3, body_lr=1e-5, warmup_steps=0)  # fmt: skip
    run = FinetuneRun(cfg, tmp_path / "run")
    optimizer = build_optimizer(run.model, cfg.optim, run.param_groups(run.model))
    assert optimizer.defaults["fused"]  # fused AdamW on a CPU, as in pretraining
    groups = {g["group"]: g for g in optimizer.param_groups}
    assert set(groups) == {"body/decay", "body/no_decay", "head/decay", "head/no_decay"}
    assert groups["body/decay"]["lr"] == pytest.approx(1e-5)
    assert groups["head/decay"]["lr"] == pytest.approx(1e-3)
    assert groups["head/no_decay"]["weight_decay"] == 0.0
    head = {id(p) for p in run.model.head.parameters()}
    in_head = {id(p) for g in optimizer.param_groups if g["group"].startswith("head")
               for p in g["params"]}  # fmt: skip
    assert in_head == head
    total = sum(len(g["params"]) for g in optimizer.param_groups)
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
        "optim.lr=-1": "optim.lr must be a finite number > 0",
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


# ---------------------------------------------------------------------------------------
# Tagging
# ---------------------------------------------------------------------------------------


def test_tagging_alignment_first_subtoken(toks: dict[str, str]) -> None:
    from triform.finetune.config import TaskSection
    from triform.finetune.data import Row
    from triform.finetune.tasks import build_task
    from triform.finetune.tasks.tagging import align_labels
    from triform.presets import get
    from triform.tokenizers import load_tokenizer

    assert align_labels([None, 0, 1, 1, 1, 2, None], [5, 6, 7]) == [-100, 5, 6, -100, -100, 7, -100]
    tok = load_tokenizer(toks["bert"])
    assert len(tok.encode("riverstone", add_special_tokens=False).ids) > 1  # a split word
    task = build_task(TaskSection(kind="tagging", train="x"), tok, get("bert-tiny"))
    row = Row({"tokens": ["apple", "riverstone", KEYWORD], "tags": ["O", "B-LOC", "B-ANI"]}, "r")
    task.setup([row])
    assert task.labels == ["O", "B-ANI", "B-LOC"]
    (feature,) = task.encode([row], training=True)
    expected, best = [-100], [0]  # [CLS]
    for word, label in zip(row.values["tokens"], [0, 2, 1], strict=True):
        pieces = len(tok.encode(word, add_special_tokens=False).ids)
        expected += [label] + [-100] * (pieces - 1)
        best += [label] + [0] * (pieces - 1)  # later sub-tokens' predictions are not read
    assert feature["labels"] == [*expected, -100]  # [SEP]
    best.append(0)
    outputs = [(best, [0.5] * len(best))]  # per token: the best tag and its probability
    assert task.decode(outputs, [feature], [row]) == [["O", "B-LOC", "B-ANI"]]


def test_tagging_runs_with_entity_f1(tmp_path: Path, toks: dict[str, str]) -> None:
    rng = random.Random(5)
    rows = []
    for _ in range(24):
        words = rng.choices(WORDS, k=5)
        tags = ["B-LOC" if w in ("river", "ocean") else "O" for w in words]
        at = rng.randrange(4)
        words[at : at + 2], tags[at : at + 2] = [KEYWORD, "zebra"], ["B-ANI", "I-ANI"]
        rows.append({"words": " ".join(words), "ner": tags})
    data = write_jsonl(tmp_path / "ner.jsonl", rows)
    task = {"kind": "tagging", "train": data, "validation": data, "tokens": "words", "tags": "ner"}
    result = finetune(make_config(tmp_path, "electra-tiny", toks["bert"], task, epochs=2))
    assert set(result.validation) == {"f1", "precision", "recall", "accuracy", "loss"}
    (tags,) = load_finetuned(result.best_dir).predict(["apple zebra zebra river"])
    assert len(tags) == 4


# ---------------------------------------------------------------------------------------
# Extractive QA
# ---------------------------------------------------------------------------------------


def test_squad_exact_match_and_f1() -> None:
    from triform.finetune.metrics import normalize_answer, squad_metrics

    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    scores = squad_metrics(["the Eiffel Tower", "Paris"], [["Eiffel Tower"], ["in Paris, France"]])
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(75.0)  # (1 + F1("paris", "in paris france") = 0.5) / 2


def test_qa_windows_find_a_span_across_a_window_boundary(toks: dict[str, str]) -> None:
    from triform.finetune.config import TaskSection
    from triform.finetune.data import Row
    from triform.finetune.tasks import build_task
    from triform.finetune.tasks.qa import best_span
    from triform.presets import get
    from triform.tokenizers import load_tokenizer

    tok = load_tokenizer(toks["bert"])
    cfg = TaskSection(kind="qa", train="x", max_length=20, stride=6)
    task = build_task(cfg, tok, get("bert-tiny"))
    context = " ".join(WORDS * 3)
    question = {"question": f"where is the {KEYWORD}", "context": context}
    windows = task.encode([Row(question, "q")], training=False)
    assert len(windows) > 2
    # The answer: the last context word of window 0 and the word after it (so it crosses).
    last = max(i for i, o in enumerate(windows[0]["offsets"]) if o is not None)
    start = windows[0]["offsets"][last][0]
    end = context.index(" ", context.index(" ", start) + 1)
    answer = context[start:end]
    row = Row({**question, "answer_text": answer, "answer_start": start}, "q")
    features = task.encode([row], training=True)
    assert (features[0]["start"], features[0]["end"]) == (0, 0)  # not whole in window 0
    holding = [f for f in features if f["start"] > 0]
    assert holding and holding[0] is features[1]
    for f in holding:  # the labelled tokens map back to exactly the answer
        assert context[f["offsets"][f["start"]][0] : f["offsets"][f["end"]][1]] == answer
    # Decoding: scores peaked on the answer in window 1 find it across all windows.
    scored = []
    for f in features:
        n = len(f["input_ids"])
        s, e = [0.0] * n, [0.0] * n
        if f is features[1]:
            s[f["start"]], e[f["end"]] = 5.0, 5.0
        scored.append((s, e, f["offsets"]))
    assert best_span(scored, context, max_tokens=5)["answer"] == answer


def test_qa_runs_end_to_end(tmp_path: Path, toks: dict[str, str]) -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(12):
        words = rng.choices(WORDS, k=30)
        at = rng.randrange(30)
        words[at] = KEYWORD
        context = " ".join(words)
        rows.append({"q": f"where is {KEYWORD}", "c": context, "a": KEYWORD,
                     "s": context.index(KEYWORD)})  # fmt: skip
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    task = {"kind": "qa", "train": data, "validation": data, "question": "q", "context": "c",
            "answer_text": "a", "answer_start": "s", "max_length": 20, "stride": 5}  # fmt: skip
    result = finetune(make_config(tmp_path, "bert-tiny", toks["bert"], task, epochs=2))
    assert set(result.validation) == {"exact_match", "f1", "loss"}
    ft = load_finetuned(result.best_dir)
    (answer,) = ft.predict([(f"where is {KEYWORD}", rows[0]["c"])])
    assert isinstance(answer, str) and answer in rows[0]["c"]
    (found,) = ft.predict([(f"where is {KEYWORD}", rows[0]["c"])], scores=True)
    assert found["prediction"] == answer and 0 < found["score"] <= 1
    assert rows[0]["c"][found["start"] : found["end"]] == answer
    out = tmp_path / "answers.jsonl"  # the same through `triform predict`
    assert main(["predict", str(tmp_path / "run"), "--input", data, "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12 and records[0]["prediction"] == answer


# ---------------------------------------------------------------------------------------
# Text-to-text (T5, BART)
# ---------------------------------------------------------------------------------------


def seq2seq_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Two tasks in one file, told apart by their prefix: copy and reverse three words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(WORDS, k=3)
        if i % 2:
            rows.append({"src": " ".join(words), "tgt": " ".join(words[::-1]),
                         "prefix": "reverse: "})  # fmt: skip
        else:
            rows.append({"src": " ".join(words), "tgt": " ".join(words)})  # task_prefix
    return rows


@pytest.mark.parametrize("preset,family", [("t5-tiny", "t5"), ("bart-tiny", "bart")])
def test_text_to_text_mixed_tasks(
    tmp_path: Path, toks: dict[str, str], preset: str, family: str
) -> None:
    data = write_jsonl(tmp_path / "s2s.jsonl", seq2seq_rows(16, 0))
    task = {"kind": "text-to-text", "train": data, "validation": data, "source": "src",
            "target": "tgt", "task_prefix": "copy: ", "max_target_length": 12,
            "generate_max_tokens": 8}  # fmt: skip
    cfg = make_config(tmp_path, preset, toks[family], task, epochs=2, batch_size=4)
    result = finetune(cfg)
    assert set(result.validation) == {"rougeL", "rouge1", "rouge2", "bleu", "exact_match", "loss"}
    ft = load_finetuned(result.best_dir)
    rows = [Row_(r) for r in seq2seq_rows(2, 0)]
    features = ft.task.encode(rows, training=True)
    tok = ft.tokenizer
    assert tok.decode(features[0]["input_ids"]).startswith("copy")
    assert tok.decode(features[1]["input_ids"]).startswith("reverse")
    assert features[0]["decoder_input_ids"][1:] == features[0]["labels"][:-1]
    assert features[0]["labels"][-1] == tok.token_to_id("</s>")  # targets end with eos
    batch = ft.task.collate(features)  # both tasks in one batch
    assert batch["labels"].shape[0] == 2
    (out,) = ft.predict([f"copy: {WORDS[0]} {WORDS[1]}"])
    assert isinstance(out, str)
    assert ft.predict([f"copy: {WORDS[0]} {WORDS[1]}"], scores=True) == [{"prediction": out}]
    predictions = tmp_path / "generated.jsonl"
    args = ["predict", str(result.best_dir), "--input", data, "--out", str(predictions)]
    assert main([*args, "--source", "src", "--no-progress"]) == 0
    generated = [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()]
    assert generated == ft.predict([Row_(r).values for r in seq2seq_rows(16, 0)])


def Row_(values: dict[str, Any]):  # noqa: N802 - a tiny factory for in-memory rows
    from triform.finetune.data import Row

    return Row(values, "memory")


# ---------------------------------------------------------------------------------------
# GPT-1 style fine-tuning
# ---------------------------------------------------------------------------------------


def gpt_task(toks: dict[str, str], kind: str, **cfg: Any):
    from triform.finetune.config import TaskSection
    from triform.finetune.tasks import build_task
    from triform.presets import get
    from triform.tokenizers import load_tokenizer

    tok = load_tokenizer(toks["gpt2"])
    return build_task(TaskSection(kind=kind, train="x", **cfg), tok, get("gpt-tiny")), tok


def test_gpt_input_transformations(toks: dict[str, str]) -> None:
    from triform.finetune.tasks.gpt import DELIM, EXTRACT, START

    task, tok = gpt_task(toks, "gpt-entailment")
    s, d, x = (tok.token_to_id(t) for t in (START, DELIM, EXTRACT))
    assert None not in (s, d, x) and len({s, d, x}) == 3

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    a, b = "apple river", "stone cloud green"
    row = Row_({"text": a, "text_pair": b, "choices": [b, "music"]})
    (f,) = task.encode([row], training=False)
    assert f["sequences"] == [[s, *ids(a), d, *ids(b), x]]

    task, _ = gpt_task(toks, "gpt-classification")
    assert task.encode([row], training=False)[0]["sequences"] == [[s, *ids(a), x]]

    task, _ = gpt_task(toks, "gpt-similarity")
    assert task.encode([row], training=False)[0]["sequences"] == [
        [s, *ids(a), d, *ids(b), x],
        [s, *ids(b), d, *ids(a), x],
    ]
    task, _ = gpt_task(toks, "gpt-multiple-choice")
    assert task.encode([row], training=False)[0]["sequences"] == [
        [s, *ids(a), d, *ids(b), x],
        [s, *ids(a), d, *ids("music"), x],
    ]
    # cut longest-first to max_length, keeping the frame
    task, _ = gpt_task(toks, "gpt-entailment", max_length=8)
    (seq,) = task.encode([Row_({"text": " ".join(WORDS), "text_pair": "apple"})], False)[0][
        "sequences"
    ]
    short = ids("apple")  # the shorter text is kept whole, the longer one is cut
    assert seq == [s, *ids(" ".join(WORDS))[: 8 - 3 - len(short)], d, *short, x]


def test_resize_token_embeddings_keeps_tying() -> None:
    import triform
    from triform.finetune.body import resize_token_embeddings
    from triform.presets import get

    for preset in ("gpt2-tiny", "t5-tiny", "bert-tiny"):
        model = triform.build_model(get(preset, vocab_size=300))
        before = model.state_dict()
        resize_token_embeddings(model, 303)
        assert model.config.vocab_size == 303
        head = model.lm_head.decoder
        table = model.decoder_embeddings.token if preset == "t5-tiny" else model.embeddings.token
        assert table.weight.shape[0] == 303 and head.out_features == 303
        assert head.weight is table.weight  # still tied
        name = next(k for k in before if k.endswith("token.weight"))
        assert torch.equal(model.state_dict()[name][:300], before[name])
        ids = torch.tensor([[1, 302]])
        out = model(ids, decoder_input_ids=ids) if preset == "t5-tiny" else model(ids)
        assert out.logits.shape[-1] == 303


def test_auxiliary_lm_loss_is_added(toks: dict[str, str]) -> None:
    import triform
    from triform.finetune.tasks import FinetuneModel
    from triform.presets import get

    rows = [Row_({"text": "apple river", "label": "a"}), Row_({"text": "stone", "label": "b"})]
    losses = {}
    for weight in (0.0, 0.5):
        task, tok = gpt_task(toks, "gpt-classification", lm_weight=weight)
        task.setup(rows)
        torch.manual_seed(0)
        body = triform.build_model(get("gpt-tiny", vocab_size=300, dropout=0.0,
                                       attention_dropout=0.0))  # fmt: skip
        task.prepare_body(body)
        assert body.config.vocab_size == tok.get_vocab_size(with_added_tokens=True) == 303
        model = FinetuneModel(body, task.build_head(body)).eval()
        batch = task.collate(task.encode(rows, training=True))
        with torch.no_grad():
            losses[weight] = float(task.loss(model, batch))
            _, lm = task.forward(model, batch)
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * float(lm), rel=1e-4)
    assert float(lm) > 1.0


@pytest.mark.parametrize(
    "kind",
    ["gpt-classification", "gpt-entailment", "gpt-similarity", "gpt-multiple-choice", "scores"],
)
def test_gpt_kinds_run(tmp_path: Path, toks: dict[str, str], kind: str) -> None:
    regression = kind == "scores"  # gpt-similarity with a score to regress
    kind = "gpt-similarity" if regression else kind
    rng = random.Random(11)
    rows = []
    for _ in range(16):
        a, b = " ".join(rng.choices(WORDS, k=3)), " ".join(rng.choices(WORDS, k=3))
        good = rng.randrange(3)
        options = [b, b, b]
        options[good] = a
        label = good if kind == "gpt-multiple-choice" else int(good == 0)
        rows.append({"text": a, "text_pair": b, "label": label, "choices": options})
    data = write_jsonl(tmp_path / "gpt.jsonl", rows)
    task = {"kind": kind, "train": data, "validation": data, "regression": regression}
    result = finetune(make_config(tmp_path, "gpt-tiny", toks["gpt2"], task, steps=4))
    assert ("pearson" if regression else "accuracy") in result.validation
    assert result.validation["loss"] > 0
    ft = load_finetuned(result.best_dir)
    inputs = {"gpt-classification": "apple", "gpt-entailment": ("apple", "stone"),
              "gpt-similarity": ("apple", "stone"),
              "gpt-multiple-choice": ("apple", ["stone", "apple"])}  # fmt: skip
    (prediction,) = ft.predict([inputs[kind]])
    (found,) = ft.predict([inputs[kind]], scores=True)
    assert found["prediction"] == prediction
    if regression:
        assert isinstance(prediction, float) and set(found) == {"prediction"}
    elif kind == "gpt-multiple-choice":
        assert prediction in (0, 1) and len(found["probabilities"]) == 2  # the row's choices
        assert sum(found["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    else:
        assert prediction in ft.labels and list(found["probabilities"]) == ft.labels
        assert found["score"] == max(found["probabilities"].values())


# ---------------------------------------------------------------------------------------
# Where the body comes from; the shipped example config
# ---------------------------------------------------------------------------------------


def test_body_from_triform_run_and_hf_folder(tmp_path: Path, toks: dict[str, str]) -> None:
    import triform
    from triform.interop import hf
    from triform.presets import get
    from triform.tokenizers import fit_to_tokenizer, load_tokenizer
    from triform.train.checkpoint import save_checkpoint

    tok = load_tokenizer(toks["bert"])
    config = fit_to_tokenizer(get("bert-tiny", **TINY), tok)
    pretrained = triform.build_model(config)
    run = tmp_path / "pretrain-run"  # what `triform pretrain` leaves
    run.mkdir()
    (run / "model.json").write_text(json.dumps(config.to_dict()))
    save_tokenizer(tok, run / "tokenizer.json")
    save_checkpoint(run, 10, pretrained, None, None)
    hf_dir = tmp_path / "hf"  # an HF checkpoint folder
    hf.save(pretrained, hf_dir)
    save_tokenizer(tok, hf_dir / "tokenizer.json")

    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(16, 0))
    for source in (run, hf_dir):
        task = {"kind": "classification", "train": train}
        model = {"source": str(source)}
        config = make_config(tmp_path, "", "", task, model=model, steps=1, lr=1e-9)
        result = finetune(config, overwrite=True)  # one folder for both runs
        body = load_finetuned(result.final_dir).model.body
        # the body starts from the pretrained weights (a 1e-9 step barely moves them)
        w = body.embeddings.token.weight
        assert torch.allclose(w, pretrained.embeddings.token.weight, atol=1e-6)


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    cfg = load_finetune_config(root / "configs" / "finetune" / "example.toml")
    assert cfg.task.kind == "pair-classification" and cfg.metric == "accuracy"
