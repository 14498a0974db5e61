"""Smoke runs of the training benchmarks (benchmarks/bench_train.py, bench_matmul.py) in a
tiny mode, so that they keep working as the core changes."""

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
