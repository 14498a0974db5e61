"""The fine-tuning trainer as a mature trainer: exact resume, gradient accumulation, early
stopping, class weights, balanced sampling and subword regularization of the training texts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

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
from triform.finetune import finetune, load_finetune_config
from triform.finetune.trainer import FinetuneRun
from triform.runs import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return family_tokenizers(tmp_path_factory.mktemp("tok"))


def imbalanced_rows(n: int, minority: float, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "text": " ".join(rng.choices(WORDS, k=4)),
            "label": "rare" if rng.random() < minority else "common",
        }
        for _ in range(n)
    ]


def test_resume_is_bit_identical(
    tmp_path: Path, toks: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run interrupted mid-epoch and resumed from the CLI ends with the same weights, best
    model and validation history as one that never stopped (dropout on, so the RNG states
    matter; accumulation on, so the data position is in micro-batches of steps)."""
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(32, 0))
    val = write_jsonl(tmp_path / "val.jsonl", keyword_rows(8, 1))
    task = {"kind": "classification", "train": train, "validation": val}
    model = {
        "source": "preset:bert-tiny",
        "tokenizer": toks["bert"],
        "overrides": {
            "hidden_size": 32,
            "num_heads": 2,
            "ffn_size": 64,
            "num_layers": 1,
            "max_positions": 64,
            "dropout": 0.1,
        },
    }
    common = {
        "epochs": 2,
        "batch_size": 8,
        "grad_accum": 2,
        "eval_every": 2,
        "checkpoint_every": 3,
        "keep_last": 2,
    }
    one = finetune(make_config(tmp_path / "one", "", "", task, model=model, **common))
    assert one.steps == 8  # 32 examples / 8 = 4 steps an epoch (of 2 micro-batches of 4)

    config = write_toml(
        tmp_path / "ft.toml", make_config(tmp_path / "two", "", "", task, model=model, **common)
    )
    import triform.train.steps as steps

    real, calls = steps.clip_gradients, []

    def crash_in_step_five(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a user's Ctrl-C would
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "clip_gradients", crash_in_step_five)
    assert main(["finetune", config]) == 130
    run = tmp_path / "two" / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-000003"]  # mid-epoch
    monkeypatch.setattr(steps, "clip_gradients", real)
    assert main(["finetune", config, "--resume", str(run)]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["step-000006", "step-000008"]  # keep 2

    for part in ("final", "best"):
        a = load_file(tmp_path / "one" / "run" / part / "model.safetensors")
        b = load_file(run / part / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (part, key)
    history = [
        [
            (r["step"], r.get("loss"))
            for r in map(json.loads, (d / "metrics.jsonl").open())
            if r["split"] == "val"
        ]
        for d in (tmp_path / "one" / "run", run)
    ]
    assert history[0] == history[1] and [s for s, _ in history[0]] == [2, 4, 6, 8]
    saved = json.loads((run / "results.json").read_text())
    assert saved["best_step"] == one.best_step and saved["steps"] == 8


def test_resume_refuses_what_cannot_be_resumed_exactly(
    tmp_path: Path, toks: dict[str, str]
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(16, 0))
    task = {"kind": "classification", "train": train}
    cfg = make_config(tmp_path, "bert-tiny", toks["bert"], task, steps=4, batch_size=4)
    with pytest.raises(TriformError, match="no checkpoint"):
        finetune(cfg, resume=tmp_path)
    finetune(cfg)  # a checkpoint at step 4: the end of epoch 0
    other = make_config(tmp_path, "bert-tiny", toks["bert"], task, steps=8, batch_size=1)
    with pytest.raises(TriformError, match="batch size changed"):
        finetune(other, resume=tmp_path / "run")
    with pytest.raises(TriformError, match="not a fine-tuning run folder"):
        finetune(cfg, resume=tmp_path / "run" / "final")


def test_grad_accum_equals_one_big_batch(tmp_path: Path, toks: dict[str, str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(24, 0))
    task = {"kind": "classification", "train": train}
    weights = []
    for name, batch, accum in (("big", 8, 1), ("accum", 8, 2), ("uneven", 9, 3)):
        result = finetune(
            make_config(
                tmp_path / name,
                "bert-tiny",
                toks["bert"],
                task,
                batch_size=batch,
                grad_accum=accum,
                steps=3,
                precision="fp32",  # compared to 2e-6 (auto is bf16 on CPUs that have it)
            )
        )
        weights.append(load_file(result.final_dir / "model.safetensors"))
    # 2 micro-batches of 4 = one batch of 8, up to rounding. Adam divides by sqrt(v), so the
    # rounding of a near-zero gradient can move a weight by a visible fraction of lr: allow 1%
    # of the 3 steps' reach (lr 1e-3); a micro-batch lost or counted twice moves weights ~lr.
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], atol=3e-5, rtol=1e-5)
    # 3 micro-batches of 3 = 9 examples a step: another batch, other weights
    assert not torch.allclose(weights[2]["head.out.weight"], weights[0]["head.out.weight"])


def test_early_stopping(tmp_path: Path, toks: dict[str, str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(32, 0))
    val = write_jsonl(tmp_path / "val.jsonl", keyword_rows(16, 1))
    task = {"kind": "classification", "train": train, "validation": val}
    # a learning rate too small to move accuracy by the 5 points required
    cfg = make_config(
        tmp_path,
        "bert-tiny",
        toks["bert"],
        task,
        steps=20,
        eval_every=1,
        lr=1e-9,
        early_stopping_patience=2,
        early_stopping_min_delta=5.0,
    )
    result = finetune(cfg)
    assert result.stopped_early and result.steps == 3  # best at 1, no gain at 2 and 3
    assert "stopped early" in result.summary()
    evals = [
        r
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())
        if r["split"] == "val"
    ]
    assert [r["step"] for r in evals] == [1, 2, 3]
    assert list_checkpoints(tmp_path / "run")[-1].name == "step-000003"  # resumable
    with pytest.raises(ConfigError, match="needs task.validation"):
        make_config(
            tmp_path,
            "bert-tiny",
            toks["bert"],
            {"kind": "classification", "train": train},
            early_stopping_patience=2,
        )


def _run(config) -> FinetuneRun:
    """A fine-tuning run as the trainer takes it (its model built, nothing trained)."""
    return FinetuneRun(config, Path(config.train.out_dir))


def test_class_weights(tmp_path: Path, toks: dict[str, str]) -> None:
    rows = imbalanced_rows(40, 0.2, 0)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    rare = sum(r["label"] == "rare" for r in rows)
    task = {"kind": "classification", "train": train, "class_weights": "balanced"}
    run = _run(make_config(tmp_path, "bert-tiny", toks["bert"], task))
    assert run.task.labels == ["common", "rare"]
    expected = [40 / (2 * (40 - rare)), 40 / (2 * rare)]  # n / (classes * count)
    assert run.task.class_weights == pytest.approx(expected)
    batch = run.task.collate(run.features)  # both classes
    with torch.no_grad():
        scores = run.task.logits(run.model, batch).float()
        loss = float(run.task.loss(run.model, batch))
    weighted = F.cross_entropy(scores, batch["labels"], weight=torch.tensor(expected))
    assert loss == pytest.approx(float(weighted), rel=1e-5)
    assert loss != pytest.approx(float(F.cross_entropy(scores, batch["labels"])), rel=1e-6)

    task["class_weights"] = [1.0, 2.0, 3.0]
    with pytest.raises(TriformError, match="3 weights for 2 labels"):
        _run(make_config(tmp_path, "bert-tiny", toks["bert"], task))
    with pytest.raises(ConfigError, match="classification kinds"):
        make_config(
            tmp_path,
            "bert-tiny",
            toks["bert"],
            {"kind": "regression", "train": train, "class_weights": "balanced"},
        )
    # the weights travel with the saved model
    task["class_weights"] = [1.0, 4.0]
    result = finetune(make_config(tmp_path, "bert-tiny", toks["bert"], task, steps=1))
    saved = json.loads((result.final_dir / "finetune.json").read_text())
    assert saved["task_state"]["class_weights"] == [1.0, 4.0]


def test_balanced_sampler(tmp_path: Path, toks: dict[str, str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", imbalanced_rows(200, 0.1, 1))
    task = {"kind": "classification", "train": train}
    run = _run(make_config(tmp_path, "bert-tiny", toks["bert"], task, sampler="balanced"))
    labels = [f["label"] for f in run.features]
    order = run._order(0, run.features)
    assert len(order) == len(labels)
    drawn = sum(labels[i] for i in order) / len(order)  # the rare class is label 1
    assert sum(labels) / len(labels) < 0.2 and 0.35 < drawn < 0.65
    assert order == run._order(0, run.features) and order != run._order(1, run.features)
    with pytest.raises(ConfigError, match="classification kinds"):
        make_config(
            tmp_path,
            "bert-tiny",
            toks["bert"],
            {"kind": "tagging", "train": train},
            sampler="balanced",
        )


# ---------------------------------------------------------------------------------------
# Subword regularization
# ---------------------------------------------------------------------------------------


def test_framing_matches_the_tokenizer(toks: dict[str, str]) -> None:
    from triform.finetune.subwords import Framing
    from triform.tokenizers import load_tokenizer

    for family in ("bert", "bart", "t5", "gpt2"):
        tok = load_tokenizer(toks[family])
        framing = Framing(tok)
        a, b = "apple river stone", "green music"
        plain = [e.ids for e in tok.encode_batch([a, b], add_special_tokens=False)]
        for pair in (False, True):
            want = tok.encode(a, b) if pair else tok.encode(a)
            got = framing.frame(plain[0], plain[1] if pair else None)
            assert got == (want.ids, want.type_ids), family
        ids, _ = framing.frame(plain[0], plain[1], max_length=5)
        assert len(ids) <= 5


def test_bpe_dropout_without_dropout_is_the_tokenizer(toks: dict[str, str]) -> None:
    from triform.tokenizers import load_tokenizer
    from triform.tokenizers.sampling import BPEDropout

    for family in ("gpt2", "bart"):  # byte-level BPE and SentencePiece-style BPE
        tok = load_tokenizer(toks[family])
        texts = ["apple riverstone zebra", "the window of a garden", "silvercandle"]
        plain = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        assert BPEDropout(tok, 0.0, seed=0).encode_batch(texts) == plain


@pytest.mark.parametrize(
    "family,preset,kind,spec",
    [
        ("t5", "t5-tiny", "classification", {"alpha": 0.1}),  # Unigram sampling
        ("gpt2", "gpt-tiny", "gpt-classification", {"dropout": 0.3}),  # BPE-dropout
    ],
)
def test_subword_sampling_per_epoch(
    tmp_path: Path, toks: dict[str, str], family: str, preset: str, kind: str, spec: dict
) -> None:
    rows = [
        {"text": " ".join(WORDS[i : i + 4]) + " riverstone", "label": str(i % 2)} for i in range(12)
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    task = {"kind": kind, "train": train, "validation": train, "subword_sampling": spec}
    cfg = make_config(tmp_path, preset, toks[family], task, epochs=2)
    run = _run(cfg)
    rows_ = run.train_rows

    def ids(features):
        return [f.get("input_ids", f.get("sequences")) for f in features]

    epoch0, epoch1 = (ids(run.task.train_features(rows_, seed=0, epoch=e)) for e in (0, 1))
    assert epoch0 != epoch1  # tokenized afresh each epoch
    assert epoch0 == ids(run.task.train_features(rows_, seed=0, epoch=0))  # seeded
    assert epoch0 != ids(run.task.train_features(rows_, seed=1, epoch=0))
    plain = ids(run.task.encode(rows_, training=False))  # evaluation: deterministic
    assert plain == ids(run.task.encode(rows_, training=False)) and plain != epoch0
    result = finetune(cfg)  # the loop re-encodes for epoch 2
    assert result.steps == 4 and result.validation


@pytest.mark.parametrize("family", ["gpt2", "t5", "bart"])
def test_tagging_samples_each_word_as_in_running_text(toks: dict[str, str], family: str) -> None:
    """Words are sampled one at a time, each with the space before it; without sampling
    (BPE-dropout 0, Unigram's Viterbi) that is exactly the running text's tokenization."""
    from triform.finetune.config import TaskSection
    from triform.finetune.data import Row
    from triform.finetune.tasks import build_task
    from triform.presets import get
    from triform.tokenizers import SubwordSampler, load_tokenizer
    from triform.tokenizers.sampling import BPEDropout

    tok = load_tokenizer(toks[family])
    spec = {"alpha": 0.5} if family == "t5" else {"dropout": 0.5}
    cfg = TaskSection(kind="tagging", train="x", subword_sampling=spec)
    task = build_task(cfg, tok, get("bert-tiny"))
    words = ["apple", "riverstone", KEYWORD, "silvercandle", "garden"]
    rows = [Row({"tokens": words, "tags": ["O", "B-X", "O", "B-X", "O"]}, "r")]
    task.setup(rows)
    running = task.encode(rows, training=True)
    if family == "t5":
        task.sampler = SubwordSampler(tok, alpha=0.1, nbest_size=1, seed=0)  # Viterbi
    else:
        task.sampler = BPEDropout(tok, 0.0, seed=0)
    assert task.encode(rows, training=True) == running
    task.sampler = None
    epochs = [task.train_features(rows, seed=0, epoch=e) for e in range(4)]
    assert any(e[0]["input_ids"] != running[0]["input_ids"] for e in epochs)
    assert epochs[1] == task.train_features(rows, seed=0, epoch=1)
    for (feature,) in epochs:  # every word keeps its tag on its first sub-token
        first = [feature["word_ids"].index(w) for w in range(len(words))]
        assert [feature["labels"][p] for p in first] == [0, 1, 0, 1, 0]


def test_subword_sampling_config_errors(tmp_path: Path, toks: dict[str, str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(8, 0))
    for spec, message in (
        ({"alpha": 0.1, "dropout": 0.1}, "not both"),
        ({"temperature": 1.0}, "unknown key task.subword_sampling.temperature"),
        ({"dropout": 1.5}, "must be in"),
        ({"alpha": "high"}, "alpha must be a number"),
        ({"alpha": 0.1, "nbest_size": 2.5}, "nbest_size must be an integer"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_config(
                tmp_path,
                "bert-tiny",
                toks["bert"],
                {"kind": "classification", "train": train, "subword_sampling": spec},
            )
    with pytest.raises(ConfigError, match="not available for qa"):
        load_finetune_config(
            tree={
                "model": {"source": "preset:bert-tiny", "tokenizer": "t"},
                "task": {"kind": "qa", "train": train, "subword_sampling": {"alpha": 0.1}},
            }
        )
    task = {"kind": "classification", "train": train, "subword_sampling": {"alpha": 0.1}}
    with pytest.raises(ConfigError, match="needs a Unigram tokenizer"):
        _run(make_config(tmp_path, "bert-tiny", toks["bert"], task))
