"""The CUDA path (bf16 autocast, fused AdamW, flash SDPA, torch.compile, NCCL), run on a
machine with a GPU by ``benchmarks/gpu_check.sh`` (``pytest -m cuda``); skipped elsewhere."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import triform
from triform.cli import main
from triform.runtime.precision import autocast_context, resolve_precision
from triform.train.metrics import read_metrics
from triform.train.optim import OptimConfig, build_optimizer, clip_gradients

pytestmark = pytest.mark.cuda

VOCAB = 512


def _model() -> triform.TransformerModel:
    torch.manual_seed(0)
    config = triform.presets.get(
        "gpt2", hidden_size=128, num_layers=2, num_heads=4, ffn_size=512, vocab_size=VOCAB,
        max_positions=256, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    return triform.build_model(config).cuda()


def _loss(model, ids: torch.Tensor, precision: str) -> torch.Tensor:
    with autocast_context(precision, ids.device):
        logits = model(ids[:, :-1]).logits  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())


def test_bf16_autocast_step_with_fused_adamw():
    assert resolve_precision("auto", "cuda") == "bf16"
    model = _model()
    ids = torch.randint(0, VOCAB, (4, 129), device="cuda")
    with torch.no_grad():
        exact = _loss(model, ids, "fp32")
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    assert optimizer.defaults["fused"] is True
    losses = []
    for _ in range(5):
        loss = _loss(model, ids, "bf16")
        loss.backward()
        clip_gradients(model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert abs(losses[0] - exact.item()) / exact.item() < 2e-2  # bf16 compute, fp32 loss
    assert losses[-1] < losses[0]  # it learns the batch
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


def test_flash_sdpa_matches_the_math_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _model().eval()
    ids = torch.randint(0, VOCAB, (2, 128), device="cuda")
    with torch.no_grad(), autocast_context("bf16", ids.device):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = model(ids).logits.float()
        with sdpa_kernel(SDPBackend.MATH):
            math = model(ids).logits.float()
    torch.testing.assert_close(flash, math, rtol=2e-2, atol=2e-2)


def test_compiled_step_matches_eager():
    model = _model()
    ids = torch.randint(0, VOCAB, (4, 65), device="cuda")
    compiled = torch.compile(model)
    eager_loss, compiled_loss = _loss(model, ids, "bf16"), _loss(compiled, ids, "bf16")
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-2, atol=1e-2)
    compiled_loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_worker(rank: int, port: int, out: str) -> None:
    """One NCCL process: DDP and FSDP2 (bf16 parameters) steps and a sharded checkpoint."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
        LOCAL_RANK="0",
    )  # fmt: skip
    import torch.distributed as dist

    from triform.runtime.distributed import (
        all_reduce_sums,
        checkpoint_blocks,
        init_distributed,
        shutdown_distributed,
        wrap_model,
    )
    from triform.train.checkpoint import load_checkpoint, save_checkpoint

    assert init_distributed() and dist.get_backend() == "nccl"
    ids = torch.randint(0, VOCAB, (2, 65), device="cuda")
    results = {}
    for strategy, dtype in (("ddp", None), ("fsdp", torch.bfloat16)):
        model = _model()
        checkpoint_blocks(model)
        wrapped = wrap_model(model, strategy, param_dtype=dtype)
        optimizer = build_optimizer(wrapped, OptimConfig(lr=1e-3))
        loss = _loss(wrapped, ids, "bf16")
        loss.backward()
        optimizer.step()
        results[strategy] = loss.item()
        if strategy == "fsdp":
            save_checkpoint(out, 1, wrapped, optimizer, None)
            load_checkpoint(out, wrapped, optimizer)
    sums, count = all_reduce_sums({"a": 1.5}, 2)
    results["sums"] = (sums["a"], count)
    shutdown_distributed()
    Path(out, "results.json").write_text(json.dumps(results))


def test_ddp_and_fsdp_on_nccl_in_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_nccl_worker, args=(_free_port(), str(tmp_path)), nprocs=1)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["sums"] == [1.5, 2]
    assert abs(results["ddp"] - results["fsdp"]) / results["ddp"] < 2e-2
    assert (tmp_path / "checkpoints" / "step-000001" / "sharded" / ".metadata").is_file()


def test_pretrain_command_on_cuda_compiled(tmp_path):
    args = ["pretrain"]
    for item in (
        "model.hidden_size=64", "model.num_layers=2", "model.num_heads=4",
        "model.ffn_size=128", "data.seq_len=64", "tokenizer.vocab_size=400",
        "train.steps=6", "train.batch_size=8", "train.eval_every=6", "train.log_every=2",
        "train.checkpoint_every=6", "train.device=\"cuda\"", "train.compile=true",
        "train.progress=false", "train.tensorboard=false", "train.max_minutes=5.0",
        f"train.out_dir={json.dumps(str(tmp_path))}",
    ):  # fmt: skip
        args += ["--set", item]
    assert main(args) == 0
    losses = [r["loss"] for r in read_metrics(tmp_path, split="train")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "checkpoints" / "step-000006" / "model.safetensors").is_file()
