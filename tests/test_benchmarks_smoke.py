"""Smoke runs of the benchmarks (benchmarks/bench_train.py, bench_matmul.py,
bench_distill.py) in a tiny mode, so that they keep working as the core changes."""

from __future__ import annotations

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
         "--warmup", "1", "--steps", "1", "--repeats", "1", "--peak", "100", "--dropout", "0"]
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
