"""Trainer components: optimizer groups, schedules, precision, checkpoints, metrics, and the
distributed helpers (single process, plus a 2-process gloo run of DDP and FSDP2)."""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import triform
from triform.config import from_dict
from triform.errors import ConfigError, TriformError
from triform.runs import latest_checkpoint, list_checkpoints, load_weights, save_weights
from triform.runtime.distributed import (
    all_reduce_mean,
    barrier,
    checkpoint_blocks,
    gradient_sync,
    init_distributed,
    is_main_process,
    rank,
    unwrap_model,
    world_size,
    wrap_model,
)
from triform.runtime.precision import autocast_context, resolve_precision
from triform.train import checkpoint as ckpt
from triform.train.checkpoint import load_checkpoint, save_checkpoint
from triform.train.metrics import MetricsLogger, read_metrics
from triform.train.optim import (
    OptimConfig,
    build_optimizer,
    clip_gradients,
    decay_split,
    param_groups,
)
from triform.train.schedules import ScheduleConfig, build_scheduler, lr_factor

VOCAB = 1000  # the tiny presets' vocabulary


def tiny(name: str = "gpt2-tiny", **overrides) -> triform.TransformerModel:
    overrides.setdefault("dropout", 0.0)
    overrides.setdefault("attention_dropout", 0.0)
    return triform.build_model(triform.presets.get(name, **overrides))


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def train_steps(model, optimizer, scheduler, steps: int) -> None:
    """A few steps that draw from the torch, python and numpy RNGs (and dropout)."""
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (2, 16))
        scale = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        (lm_loss(model, ids) * scale).backward()
        clip_gradients(model, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def snapshot(model, optimizer, scheduler) -> dict:
    opt = optimizer.state_dict()
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "optim": {i: {k: v.clone() for k, v in s.items()} for i, s in opt["state"].items()},
        "lr": list(scheduler.get_last_lr()),
    }


def assert_identical(a: dict, b: dict) -> None:
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key
    assert a["optim"].keys() == b["optim"].keys()
    for index in a["optim"]:
        for key in a["optim"][index]:
            assert torch.equal(a["optim"][index][key], b["optim"][index][key]), (index, key)
    assert a["lr"] == b["lr"]


def make_run(seed: int, dropout: float = 0.1):
    torch.manual_seed(seed)
    model = tiny(dropout=dropout, attention_dropout=dropout)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    scheduler = build_scheduler(optimizer, ScheduleConfig(warmup_steps=2), total_steps=10)
    return model, optimizer, scheduler


# ---------------------------------------------------------------------------- optimizer


def test_param_groups_decay_rules():
    model = tiny("gpt2-tiny")
    decay, no_decay = decay_split(model, OptimConfig())
    assert "embeddings.token.weight" in decay  # token table decayed by default
    assert "decoder.layers.0.self_attn.qkv.weight" in decay
    assert "decoder.layers.1.ffn.up.weight" in decay
    for name in (
        "embeddings.position.weight",
        "decoder.layers.0.self_attn.qkv.bias",
        "decoder.layers.0.ffn.up.bias",
        "decoder.layers.0.self_norm.weight",
        "decoder.final_norm.weight",
    ):
        assert name in no_decay, name
    assert not set(decay) & set(no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))

    decay, no_decay = decay_split(model, OptimConfig(decay_embeddings=False))
    assert "embeddings.token.weight" in no_decay

    # Position tables can be decayed on request; norms and biases never.
    decay, no_decay = decay_split(model, OptimConfig(no_decay=[]))
    assert "embeddings.position.weight" in decay
    assert "decoder.layers.0.ffn.up.bias" in no_decay
    assert "decoder.layers.0.self_norm.weight" in no_decay

    t5 = tiny("t5-tiny")  # RMSNorm without biases, relative position bias tables
    decay, no_decay = decay_split(t5, OptimConfig())
    assert "encoder.relative_bias.embedding.weight" in no_decay
    assert "decoder.layers.0.cross_norm.weight" in no_decay
    assert "decoder.layers.0.cross_attn.kv.weight" in decay

    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    assert [g["group"] for g in groups] == ["decay", "no_decay"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 50)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids)))


def test_tied_parameters_appear_once():
    model = Tied()
    optimizer = build_optimizer(model, OptimConfig())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters())) == 4
    decay, no_decay = decay_split(model, OptimConfig())
    assert decay == ["embed.weight"]
    # Any use saying "no decay" wins for a tied tensor.
    decay, _ = decay_split(model, OptimConfig(decay_embeddings=False))
    assert decay == []
    assert optimizer.defaults["fused"] is True  # fused on the CPU too
    assert build_optimizer(model, OptimConfig(fused=False)).defaults["fused"] in (None, False)


def test_fused_adamw_matches_the_loop_implementation():
    """torch's fused AdamW (the default on CPU and CUDA) updates the weights as the
    per-parameter loop does, within 1e-6 after 10 steps, weight decay groups included."""
    import copy

    torch.manual_seed(0)
    plain_model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    fused_model = copy.deepcopy(plain_model)
    cfg = {"lr": 1e-2, "weight_decay": 0.1}
    plain = build_optimizer(plain_model, OptimConfig(**cfg, fused=False))
    fused = build_optimizer(fused_model, OptimConfig(**cfg))
    assert fused.defaults["fused"] is True
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(4, 16, generator=g)
        for model, optimizer in ((plain_model, plain), (fused_model, fused)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(plain_model.parameters(), fused_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    start = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    assert (start[0].weight - fused_model[0].weight).abs().max() > 1e-3  # it did train


def test_optim_config_validation():
    cfg = from_dict(OptimConfig, {"lr": 1, "betas": (0.9, 0.95)}, "optim")
    assert cfg.lr == 1.0 and cfg.betas == [0.9, 0.95]
    with pytest.raises(ConfigError, match="optim.betas"):
        OptimConfig(betas=[0.9])
    with pytest.raises(ConfigError, match="optim.lr"):
        OptimConfig(lr=0)
    with pytest.raises(ConfigError, match="unknown key optim.momentum"):
        from_dict(OptimConfig, {"momentum": 0.9}, "optim")


def test_clip_gradients():
    layer = nn.Linear(4, 4)
    (layer(torch.ones(3, 4)) * 100).sum().backward()
    norm = clip_gradients(layer, 1.0)
    assert norm is not None and norm.item() > 1.0
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in layer.parameters()]))
    assert total.item() == pytest.approx(1.0, rel=1e-4)
    assert clip_gradients(layer, 0.0) is None


# ---------------------------------------------------------------------------- schedules


def lrs(kind: str, steps: int, warmup: int = 10, total: int = 100, **kw) -> list[float]:
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = ScheduleConfig(kind=kind, warmup_steps=warmup, **kw)
    scheduler = build_scheduler(optimizer, cfg, total_steps=total)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])  # the lr this update uses
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "inverse-sqrt"])
def test_warmup(kind):
    values = lrs(kind, 12)
    assert values[0] == pytest.approx(0.1)  # first update: lr / warmup
    assert values[4] == pytest.approx(0.5)
    assert values[9] == pytest.approx(1.0)  # update `warmup` (1-based) reaches the peak
    assert max(values) == pytest.approx(1.0)


def test_decay_shapes():
    cosine = lrs("cosine", 120, min_lr_ratio=0.1)
    assert cosine[99] == pytest.approx(0.1)  # the last update sits on the floor
    assert cosine[119] == pytest.approx(0.1)  # and stays there
    assert cosine[54] == pytest.approx(0.55)  # half-way: floor + (1 - floor) / 2
    assert all(a >= b for a, b in zip(cosine[9:-1], cosine[10:], strict=True))
    linear = lrs("linear", 100, min_lr_ratio=0.0)
    assert linear[54] == pytest.approx(0.5)
    assert linear[99] == pytest.approx(0.0)
    assert lrs("constant", 100)[99] == 1.0
    no_warmup = lrs("cosine", 2, warmup=0)
    assert no_warmup[0] == pytest.approx(1.0)


def test_inverse_sqrt_is_the_transformer_schedule():
    warmup = 4000
    cfg = ScheduleConfig(kind="inverse-sqrt", warmup_steps=warmup)
    for n in (1, 100, 3999, 4000, 4001, 10_000, 100_000):
        expected = min(n**-0.5, n * warmup**-1.5) / warmup**-0.5
        assert lr_factor(n - 1, cfg, 100_000) == pytest.approx(expected)
    assert lr_factor(warmup - 1, cfg, 100_000) == pytest.approx(1.0)


def test_schedule_config_validation():
    with pytest.raises(ConfigError, match="schedule.kind"):
        ScheduleConfig(kind="step")
    with pytest.raises(ConfigError, match="schedule.min_lr_ratio"):
        ScheduleConfig(min_lr_ratio=1.5)
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigError, match="total_steps"):
        build_scheduler(optimizer, ScheduleConfig())


# ---------------------------------------------------------------------------- precision


def test_precision_choice(monkeypatch: pytest.MonkeyPatch):
    from triform.runtime import precision

    for feature, expected in (("AMX", "bf16"), ("AVX512-BF16", "bf16"), (None, "fp32")):
        monkeypatch.setattr(precision, "cpu_bf16_feature", lambda feature=feature: feature)
        assert resolve_precision("auto", "cpu") == expected
        assert (feature or "without native bf16") in precision.precision_reason("cpu")
    monkeypatch.undo()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(TriformError, match="fp16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("fp8", "cpu")
    a = torch.randn(4, 4)
    with autocast_context("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32
    with autocast_context("bf16", torch.device("cpu")):
        assert (a @ a).dtype == torch.bfloat16


# ---------------------------------------------------------------------------- checkpoints


def test_resume_is_bit_identical(tmp_path):
    model, optimizer, scheduler = make_run(seed=0)
    random.seed(1)
    np.random.seed(1)
    train_steps(model, optimizer, scheduler, 3)
    path = save_checkpoint(
        tmp_path, 3, model, optimizer, scheduler, extra={"note": "hi"}, data_position=3
    )
    assert path == tmp_path / "checkpoints" / "step-000003"
    train_steps(model, optimizer, scheduler, 3)
    reference = snapshot(model, optimizer, scheduler)

    model2, optimizer2, scheduler2 = make_run(seed=123)  # different init and RNG
    random.seed(99)
    np.random.seed(99)
    state = load_checkpoint(tmp_path, model2, optimizer2, scheduler2)
    assert (state.step, state.extra, state.data_position) == (3, {"note": "hi"}, 3)
    assert state.path == path
    train_steps(model2, optimizer2, scheduler2, 3)
    assert_identical(reference, snapshot(model2, optimizer2, scheduler2))

    # Everything that is not weights loads with weights_only=True; the JSON is readable.
    for name in ("optimizer.pt", "trainer.pt"):
        torch.load(path / name, weights_only=True)
    summary = json.loads((path / "trainer_state.json").read_text())
    assert summary["step"] == 3 and summary["extra"] == {"note": "hi"}


def test_crash_during_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    model, optimizer, scheduler = make_run(seed=0, dropout=0.0)
    good = save_checkpoint(tmp_path, 1, model, optimizer, scheduler)
    good_weights = (good / "model.safetensors").read_bytes()
    train_steps(model, optimizer, scheduler, 1)

    real_save = ckpt._save

    def crash(obj, path):
        real_save(obj, path)  # a file is half-way there...
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt, "_save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, optimizer, scheduler, keep_last=1)
    monkeypatch.setattr(ckpt, "_save", real_save)
    assert latest_checkpoint(tmp_path) == good
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"]
    assert (good / "model.safetensors").read_bytes() == good_weights

    # A hard kill leaves a hidden temporary folder: never picked, cleaned by the next save.
    stale = tmp_path / "checkpoints" / ".tmp-step-000003-999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == good
    load_checkpoint(tmp_path, model)  # loads step 1, not the stale folder
    assert torch.equal(model.embeddings.token.weight, load_state(good)["embeddings.token.weight"])
    save_checkpoint(tmp_path, 4, model, optimizer, scheduler)
    assert not stale.exists()


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_keep_last_and_resave(tmp_path):
    model, optimizer, scheduler = make_run(seed=0, dropout=0.0)
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    save_checkpoint(tmp_path, 5, model, optimizer, scheduler, keep_last=2)  # same step again
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000004",
        "step-000005",
    ]
    assert latest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints/step-000005"
    # Steps past six digits still sort numerically.
    save_checkpoint(tmp_path, 1_234_567, model, None, None, keep_last=2)
    assert latest_checkpoint(tmp_path).name == "step-1234567"


def test_wrong_model_and_missing_checkpoints(tmp_path):
    model, optimizer, scheduler = make_run(seed=0, dropout=0.0)
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler)
    with pytest.raises(TriformError, match="key 'embeddings.segment.weight'"):
        load_checkpoint(tmp_path, tiny("bert-tiny"))
    with pytest.raises(TriformError, match="'embeddings.token.weight' has shape"):
        load_checkpoint(tmp_path, tiny(hidden_size=32, num_heads=2))
    with pytest.raises(TriformError, match="unexpected key 'embeddings.position.weight'"):
        load_checkpoint(tmp_path, tiny(position="rotary"))
    with pytest.raises(TriformError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TriformError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "empty", model)
    assert latest_checkpoint(tmp_path / "empty") is None
    # An optimizer of another shape.
    other = build_optimizer(Tied(), OptimConfig())
    with pytest.raises(TriformError, match="optimizer state does not fit"):
        load_checkpoint(tmp_path, model, other)


def test_save_and_load_weights_with_tied_tensors(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    path = save_weights(model, tmp_path / "w" / "model.safetensors")
    assert list(load_state(path.parent)) == [
        "embed.weight",
        "head.bias",
        "norm.bias",
        "norm.weight",
    ]
    other = Tied()
    load_weights(other, path)
    assert other.head.weight is other.embed.weight  # still tied
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    ddp_like = nn.Sequential(Tied())
    with pytest.raises(TriformError, match="missing key '0.embed.weight'"):
        load_weights(ddp_like, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TriformError, match="cannot read weights"):
        load_weights(other, tmp_path / "junk.safetensors")


# ---------------------------------------------------------------------------- metrics


def test_metrics_files(tmp_path):
    log = MetricsLogger(tmp_path, total_steps=4, progress=True)
    for step in (1, 2, 3, 4):
        log.log(step, {"loss": 10.0 / step, "lr": 1e-3, "tokens_per_s": 12345.0})
    log.log(4, {"loss": 3.0, "perplexity": math.exp(3.0)}, split="val")
    log.log(4, {"loss": torch.tensor(float("nan"))}, split="val")
    log.text(4, "sample", "once upon a time")
    png = log.close()
    log.close()  # idempotent

    records = read_metrics(tmp_path)
    assert [r["split"] for r in records] == ["train"] * 4 + ["val", "val", "text"]
    assert records[0]["loss"] == 10.0 and records[-2]["loss"] is None
    assert read_metrics(tmp_path, split="text")[0]["text"] == "once upon a time"
    assert png == tmp_path / "loss_curve.png" and png.stat().st_size > 1000
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    # A resumed run drops what the interrupted one logged after its checkpoint.
    log = MetricsLogger(tmp_path, total_steps=4, initial_step=2, tensorboard=False)
    log.log(3, {"loss": 2.5})
    log.close()
    assert [(r["step"], r["split"]) for r in read_metrics(tmp_path)] == [
        (1, "train"),
        (2, "train"),
        (3, "train"),
    ]


def test_metrics_disabled_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "run", total_steps=3, enabled=False)
    log.log(1, {"loss": 1.0})
    log.text(1, "sample", "x")
    assert log.close() is None
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- distributed


def test_distributed_helpers_in_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed() is False
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)
    barrier()
    value = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_mean(value), value) and all_reduce_mean(2.5) == 2.5
    model = Tied()
    for strategy in ("none", "auto", "ddp", "fsdp"):
        assert wrap_model(model, strategy) is model
    with pytest.raises(ConfigError, match="train.parallel"):
        wrap_model(model, "zero3")
    with gradient_sync(model, False):
        model(torch.tensor([[1, 2]])).sum().backward()
    assert unwrap_model(model) is model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(steps: int, micro: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100)
    return torch.randint(0, VOCAB, (steps, micro, 4, 16), generator=generator)


def _dist_worker(rank_: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank_),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank_),
    )
    from triform.runs import full_state_dict
    from triform.runtime.distributed import shutdown_distributed

    torch.set_num_threads(1)
    assert init_distributed() and world_size() == world
    batches = _batches(2, 2)[:, :, 2 * rank_ : 2 * rank_ + 2]  # this rank's half
    results = {}

    def step(wrapped, optimizer, micro_batches):
        for micro, ids in enumerate(micro_batches):
            with gradient_sync(wrapped, micro == len(micro_batches) - 1):
                (lm_loss(wrapped, ids) / len(micro_batches)).backward()
        clip_gradients(wrapped, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for strategy in ("ddp", "fsdp"):
        torch.manual_seed(0)
        model = tiny()
        wrapped = wrap_model(model, strategy)
        optimizer = build_optimizer(wrapped, OptimConfig(lr=1e-3))
        for micro_batches in batches:
            step(wrapped, optimizer, micro_batches)
        if strategy == "fsdp":
            results["fsdp"] = full_state_dict(model)
            save_checkpoint(out_dir, 2, wrapped, optimizer, None)  # collective
            step(wrapped, optimizer, batches[0])
            results["fsdp_after"] = full_state_dict(model)
            torch.manual_seed(5)
            fresh = wrap_model(tiny(), "fsdp")
            fresh_optimizer = build_optimizer(fresh, OptimConfig(lr=1e-3))
            load_checkpoint(out_dir, fresh, fresh_optimizer)
            step(fresh, fresh_optimizer, batches[0])
            results["fsdp_resumed"] = full_state_dict(fresh)
        else:
            results[strategy] = full_state_dict(model)

    # FSDP2 with activation checkpointing applied before sharding, in fp32 and with bf16
    # parameters for compute (fp32 reductions and master weights): the first step's loss.
    ids = batches[0, 0]
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        model = tiny()
        checkpoint_blocks(model)
        wrapped = wrap_model(model, "fsdp", param_dtype=dtype)
        optimizer = build_optimizer(wrapped, OptimConfig(lr=1e-3))
        loss = lm_loss(wrapped, ids)
        loss.backward()
        optimizer.step()
        results[f"checkpointed_{name}_loss"] = loss.detach()
        results[f"checkpointed_{name}_dtypes"] = {p.dtype for p in model.parameters()}
        results[f"checkpointed_{name}_grad"] = all(
            p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters()
        )
    torch.manual_seed(0)
    results["rank_loss"] = lm_loss(tiny(), ids).detach()  # this rank's rows, no FSDP
    if rank_ == 0:
        torch.save(results, Path(out_dir) / "results.pt")
    shutdown_distributed()


@pytest.mark.slow
def test_ddp_and_fsdp_on_two_cpu_processes(tmp_path):
    """DDP and FSDP2 on gloo give the single-process result on the whole batch; an FSDP
    checkpoint is a plain checkpoint, and an FSDP run resumes from it exactly."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("gloo backend not available")
    # fork: the workers share the imported modules (a spawn re-imports torch, seconds each)
    mp.start_processes(
        _dist_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    results = torch.load(tmp_path / "results.pt", weights_only=True)

    torch.manual_seed(0)
    model = tiny()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    for micro_batches in _batches(2, 2):
        for ids in micro_batches:
            (lm_loss(model, ids) / len(micro_batches)).backward()
        clip_gradients(model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    expected = model.state_dict()
    del expected["lm_head.decoder.weight"]  # tied to the token table: saved once
    # Each rank sums its half of the batch, so gradients differ from one process's by
    # rounding, and Adam (dividing by sqrt(v)) can turn that into a visible fraction of lr on
    # a near-zero gradient: tolerance 2.5 % of the two steps' reach (2 * lr). A data-parallel
    # bug (a rank's gradient lost or not averaged) moves weights by ~lr.
    for strategy in ("ddp", "fsdp"):
        got = results[strategy]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(
                got[key], value, rtol=1e-4, atol=5e-5, msg=f"{strategy} {key}"
            )
    restored = tiny()
    load_checkpoint(tmp_path, restored)  # written by FSDP, read without it
    restored_state = restored.state_dict()
    for key, value in results["fsdp"].items():
        assert torch.equal(restored_state[key], value), key
    for key, value in results["fsdp_after"].items():
        assert torch.equal(value, results["fsdp_resumed"][key]), key
    # Checkpointed blocks under FSDP recompute the same loss; bf16 compute is close, not
    # equal; parameters and gradients stay fp32 either way.
    exact, bf16 = results["checkpointed_fp32_loss"], results["checkpointed_bf16_loss"]
    torch.testing.assert_close(exact, results["rank_loss"], rtol=1e-6, atol=0)
    assert bf16 != exact and abs(bf16 - exact) / exact < 2e-2
    for name in ("fp32", "bf16"):
        assert results[f"checkpointed_{name}_dtypes"] == {torch.float32}
        assert results[f"checkpointed_{name}_grad"]


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 16))
    plain, checkpointed = tiny(), tiny()
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpoint_blocks(checkpointed) == 2 and checkpoint_blocks(checkpointed) == 0
    losses = []
    for model in (plain, checkpointed):
        loss = lm_loss(model, ids)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert plain.state_dict().keys() == checkpointed.state_dict().keys()
    with torch.no_grad():  # generation: no recomputation needed, same output
        torch.testing.assert_close(plain(ids).logits, checkpointed(ids).logits)


_BLOCKS_OF_REPEATED_STEPS = """
import ctypes, json, sys, torch
from triform.runtime.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
kept = keep_freed_memory() if sys.argv[1] == "kept" else None

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20

def step():  # large blocks of the same sizes every time, written, then freed
    a, b = torch.ones(16 << 20), torch.ones(8 << 20)  # 64 MB and 32 MB
    return libc.mallinfo2().hblkhd  # bytes in mmap'd blocks while both are alive

before = libc.mallinfo2().hblkhd
mapped = [step() - before for _ in range(8)]
resident = []
for _ in range(8):
    step()
    resident.append(resident_mib())
print(json.dumps({"applied": kept, "mapped": mapped, "resident": resident}))
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or platform.libc_ver()[0] != "glibc"
    or not _has_mallinfo2(),
    reason="mallopt and mallinfo2 are glibc's (2.33 or newer)",
)
def test_kept_freed_memory_serves_large_blocks_from_the_heap() -> None:
    """What the setting controls, read from malloc's own counters: under glibc's defaults
    a step's 64 MB and 32 MB blocks are mmap'd (and unmapped on free); kept, none is, and
    the process's resident memory stays flat from step to step."""
    results = {}
    for mode in ("system", "kept"):
        out = subprocess.run(
            [sys.executable, "-c", _BLOCKS_OF_REPEATED_STEPS, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(out.stdout.splitlines()[-1])
    system, kept = results["system"], results["kept"]
    assert kept["applied"] is True, kept
    assert all(mapped >= 96 << 20 for mapped in system["mapped"]), system
    assert all(mapped == 0 for mapped in kept["mapped"]), kept
    steady = kept["resident"][4:]  # after the heap has grown to hold one step's blocks
    assert max(steady) - min(steady) <= 16, kept
