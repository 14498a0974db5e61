"""Training throughput of triform against ``transformers`` on the same shapes and batches.

    python benchmarks/bench_train.py [--shapes gpt2 bert-base t5-small] [--batch 4] [--seq 128]
        [--target-len 32] [--layers N] [--warmup 2] [--steps 1] [--repeats 8] [--dropout 0.1]
        [--precision fp32 bf16] [--triform-loss fused|logits] [--optimizer fused|loop]
        [--allocator trainers|kept|system]
        [--peak GFLOPS] [--peak-bf16 GFLOPS] [--profile] [--quick] [--json out.json]

For each shape a triform model is built from the preset and converted with
``triform.interop.hf.to_hf`` into the ``transformers`` class of the same architecture
(``GPT2LMHeadModel``, ``BertForMaskedLM``, ``T5ForConditionalGeneration``), so both sides have
the same config values, the same parameter count (asserted) and the same initial weights (their
eval-mode losses on one batch are compared). The reference uses ``attn_implementation="sdpa"``,
its fastest path on CPU; triform's layers are its own ``triform.nn.Linear`` (oneDNN's kernel
for the forward and the input gradient on a CPU in fp32), as in every triform run.

Each side lives in its own worker process (its own memory, measured separately); the parent
tells them in turn to run ``--steps`` timed steps, alternating which goes first, ``--repeats``
times, after ``--warmup`` untimed steps each; the figure is the median step time. A step is what
each library's trainer does: forward, token cross entropy (labels -100 ignored), backward and
``torch.optim.AdamW.step`` with the same hyper-parameters. The reference computes the logits
of every position and ``F.cross_entropy`` over them; triform computes the loss as its
objectives do (``--triform-loss fused``, the default: ``model(..., labels=...)``, the
vocabulary projection only at the labelled positions and fused with the cross entropy in
chunks; ``logits`` does it the reference's way). The optimizer is torch's fused AdamW on both
sides (``--optimizer fused``: triform's default, and ``transformers.Trainer``'s since torch
2.8) or the per-parameter loop (``loop``). Memory comes from glibc's malloc as each
library's trainer leaves it (``--allocator trainers``, the default): triform's keeps freed
memory for reuse (:mod:`triform.runtime.allocator`), ``transformers``' does not; ``kept`` or
``system`` puts both sides alike, the comparison of the computations alone. Each
``--precision`` is run in turn: ``fp32``, or ``bf16`` autocast on both sides (the default
adds bf16 where the hardware has it natively: CUDA, or a CPU with AMX / AVX512-BF16). Both
sides get the same inputs, attention masks included (all ones, as triform's objectives hand
them to the model). ``--quick``: tiny models, one round, a smoke run of a few seconds.

Model FLOPs (PaLM appendix B / Kaplan et al.) per step, ``B`` sequences of ``T`` tokens::

    6 * N * B*T  +  12 * L * d_attn * T * B*T

with ``N`` the parameters that take part in matrix multiplies: the non-embedding parameters
plus the vocabulary projection ``V * d`` (tied or not); lookup tables (token, position, T5's
relative bias) are left out. For the encoder-decoder (source ``S``, target ``T``) each weight
counts the tokens it sees: encoder weights and cross-attention key/value projections ``S``,
decoder weights and the head ``T``; attention is ``12 * d_attn * B * (L_enc*S^2 +
L_dec*(T^2 + T*S))``. MFU is that over the step time, divided by the machine's measured matmul
peak in the run's precision (:mod:`bench_matmul`; measured before and after the runs, the
higher taken, since on a shared virtual machine it drifts) unless ``--peak`` (fp32) /
``--peak-bf16`` give it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import triform  # noqa: E402
from bench_matmul import measure_peak  # noqa: E402
from triform.config import ModelConfig  # noqa: E402

SIDES = ("triform", "transformers")

# shape name -> (triform preset, overrides that give the preset the heads of the HF class)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("gpt2", {}),
    "bert-base": ("bert-base", {"encoder_head": "mlm", "pair_head": "none", "pooler": False}),
    "t5-small": ("t5-small", {}),
}

# --tiny: a few-second smoke run of the same code paths
TINY = {"hidden_size": 64, "num_heads": 2, "ffn_size": 128, "num_layers": 2, "vocab_size": 512}


# =========================================================================================
# What is measured
# =========================================================================================
def model_config(shape: str, layers: int | None, dropout: float | None, tiny: bool) -> ModelConfig:
    """The triform config of ``shape`` with the benchmark's overrides."""
    preset, overrides = SHAPES[shape]
    overrides = dict(overrides)
    if tiny:
        overrides.update(TINY)
        if shape == "t5-small":
            overrides["head_dim"] = 32
        if shape == "gpt2":  # GPT-2's <|endoftext|> id is outside a tiny vocabulary
            overrides.update(bos_token_id=0, eos_token_id=0)
    if layers is not None:
        overrides["num_layers"] = layers
        if shape == "t5-small":
            overrides["num_decoder_layers"] = layers
    if dropout is not None:
        overrides.update(dropout=dropout, attention_dropout=dropout)
    return triform.presets.get(preset, **overrides)


def make_batch(config: ModelConfig, batch: int, seq: int, target: int) -> dict[str, torch.Tensor]:
    """Random token ids and labels of the shape's objective (same seed on both sides).

    Decoder: next-token labels. Encoder: 15% of positions labelled (MLM), the rest -100.
    Encoder-decoder: ``seq`` source tokens, ``target`` decoder inputs and labels.
    """
    g = torch.Generator().manual_seed(1234)
    vocab = config.vocab_size
    if config.form == "decoder":
        ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        inputs = ids[:, :-1].contiguous()
        return {
            "input_ids": inputs,
            "attention_mask": torch.ones_like(inputs),
            "labels": ids[:, 1:].contiguous(),
        }
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    if config.form == "encoder":
        chosen = torch.rand(batch, seq, generator=g) < 0.15
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.where(chosen, ids, torch.full_like(ids, -100)),
        }
    labels = torch.randint(0, vocab, (batch, target), generator=g)
    start = torch.full((batch, 1), config.decoder_start_token_id or 0)
    decoder_inputs = torch.cat([start, labels[:, :-1]], dim=1)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "decoder_input_ids": decoder_inputs,
        "decoder_attention_mask": torch.ones_like(decoder_inputs),
        "labels": labels,
    }


def model_flops_per_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Training FLOPs of one step of a triform model on ``batch`` (formula in the module
    docstring): 6 x (matmul parameters x the tokens each sees) + 12 x attention terms."""
    config = model.config
    n_seq, source = batch["input_ids"].shape
    target = batch["decoder_input_ids"].shape[1] if "decoder_input_ids" in batch else source
    weighted, lookups = 0.0, set()
    for name, param in model.named_parameters():  # shared (tied) tensors come once
        if "embeddings." in name or "relative_bias" in name:
            lookups.add(id(param))  # lookup tables: no matrix multiply
            continue
        sees_source = name.startswith("encoder.") or "cross_attn.kv" in name
        weighted += param.numel() * (source if sees_source else target)
    head = model.lm_head.decoder.weight if getattr(model, "lm_head", None) else None
    if head is not None and id(head) in lookups:  # tied to the token table: still a matmul
        weighted += head.numel() * target
    d_attn = config.num_heads * config.head_size
    if config.form == "encoder-decoder":
        attention = config.num_layers * source**2 + config.decoder_layers * (
            target**2 + target * source
        )
    else:
        attention = config.num_layers * target**2
    return n_seq * (6.0 * weighted + 12.0 * d_attn * attention)


def _rss_kib(field_name: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"{field_name}:\s+(\d+)", f.read())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _steal_ticks() -> int | None:
    """CPU time the hypervisor gave to others (``steal`` in /proc/stat, clock ticks)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None


def _steal_fraction(before: int | None, seconds: float) -> float:
    """Share of this machine's CPU time stolen by the hypervisor since ``before``."""
    after = _steal_ticks()
    if before is None or after is None or seconds <= 0:
        return float("nan")
    return (after - before) / os.sysconf("SC_CLK_TCK") / (seconds * (os.cpu_count() or 1))


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so
    that resident memory measures what is live."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) of this process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# =========================================================================================
# One side in its own process
# =========================================================================================
@dataclass
class Job:
    """What a worker builds and runs."""

    side: str
    shape: str
    batch: int
    seq: int
    target: int
    layers: int | None
    dropout: float | None
    tiny: bool
    device: str
    threads: int | None = None
    lr: float = 1e-4
    precision: str = "fp32"
    triform_loss: str = "fused"
    optimizer: str = "fused"
    keep_freed_memory: bool = False


class _Trainer:
    """A model, its optimizer and a fixed batch; ``step()`` is one training step."""

    def __init__(self, job: Job) -> None:
        from triform.interop import hf

        if job.threads:
            torch.set_num_threads(job.threads)
        if job.keep_freed_memory:
            from triform.runtime.allocator import keep_freed_memory

            keep_freed_memory()
        self.device = torch.device(job.device)
        config = model_config(job.shape, job.layers, job.dropout, job.tiny)
        torch.manual_seed(0)
        model = triform.build_model(config)  # same seed: same weights for both sides
        cpu_batch = make_batch(config, job.batch, job.seq, job.target)
        self.flops = model_flops_per_step(model, cpu_batch)
        self.tokens = sum(
            cpu_batch[k].numel() for k in ("input_ids", "decoder_input_ids") if k in cpu_batch
        )
        if job.side == "transformers":
            model = hf.to_hf(model)
            model.set_attn_implementation("sdpa")
            self.attn = model.config._attn_implementation
            self.parameters = sum(p.numel() for p in model.parameters())
            self.kind = type(model).__name__
        else:
            self.attn = "sdpa (F.scaled_dot_product_attention)"
            self.parameters = model.num_parameters()
            self.kind = type(model).__name__
        self.vocab = config.vocab_size
        self.model = model.to(self.device).train()
        self.batch = {k: v.to(self.device) for k, v in cpu_batch.items()}
        self.inputs = {k: v for k, v in self.batch.items() if k != "labels"}
        self.fused_loss = job.side == "triform" and job.triform_loss == "fused"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=job.lr, weight_decay=0.01, fused=job.optimizer == "fused"
        )
        self.autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=job.precision == "bf16"
        )
        _release_free_memory()  # the conversion's leftovers: both sides start even

    def loss(self) -> torch.Tensor:
        labels = self.batch["labels"]
        with self.autocast:
            if self.fused_loss:  # triform's objectives: see the module docstring
                return self.model(**self.inputs, labels=labels).loss
            logits = self.model(**self.inputs).logits
        return F.cross_entropy(logits.float().view(-1, self.vocab), labels.view(-1))

    def eval_loss(self) -> float:
        """The loss in eval mode (no dropout), without training: the numerics check."""
        self.model.eval()
        with torch.no_grad():
            value = float(self.loss())
        self.model.train()
        return value

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, steps: int) -> list[tuple[float, float]]:
        """(wall seconds, CPU seconds of this process's threads) of each of ``steps`` steps."""
        times = []
        for _ in range(steps):
            start, cpu = time.perf_counter(), time.process_time()
            self.step()
            self.sync()
            times.append((time.perf_counter() - start, time.process_time() - cpu))
        return times

    def profile(self, steps: int, rows: int) -> str:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                self.step()
            self.sync()
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _worker(job: Job, conn: Any) -> None:
    """Serve commands from the parent: ("warmup", n), ("steps", n), ("profile", n, rows),
    ("memory",), ("stop",). Every answer is a picklable value (or an error string)."""
    try:
        rss_before_build = _rss_kib("VmRSS")
        trainer = _Trainer(job)
        conn.send(
            {
                "kind": trainer.kind,
                "attn": trainer.attn,
                "parameters": trainer.parameters,
                "flops_per_step": trainer.flops,
                "tokens_per_step": trainer.tokens,
                "eval_loss": trainer.eval_loss(),
                "rss_before_build_mib": (rss_before_build or 0) / 1024,
            }
        )
        rss_start = hwm_reset = None
        while True:
            command, *args = conn.recv()
            if command == "stop":
                break
            if command == "warmup":
                trainer.timed(args[0])
                conn.send(None)
            elif command == "steps":
                if rss_start is None:
                    rss_start, hwm_reset = _rss_kib("VmRSS"), _reset_peak_rss()
                    if trainer.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(trainer.device)
                conn.send(trainer.timed(args[0]))
            elif command == "profile":
                conn.send(trainer.profile(*args))
            elif command == "memory":
                memory: dict[str, float | None] = {
                    "rss_start_mib": rss_start / 1024 if rss_start else None,
                    "rss_peak_mib": (_rss_kib("VmHWM") or 0) / 1024 if hwm_reset else None,
                }
                if trainer.device.type == "cuda":
                    memory["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
                conn.send(memory)
    except Exception as error:  # report to the parent rather than hang it
        conn.send(f"error: {type(error).__name__}: {error}")
        raise


class _Side:
    """The parent's handle on one worker process."""

    def __init__(self, job: Job, context: Any) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(job, child), daemon=True)
        self.process.start()
        self.info = self.ask(None)

    def ask(self, message: tuple | None) -> Any:
        if message is not None:
            self.conn.send(message)
        answer = self.conn.recv()
        if isinstance(answer, str) and answer.startswith("error:"):
            raise RuntimeError(answer)
        return answer

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(("stop",))
        self.process.join(timeout=30)


# =========================================================================================
# The comparison
# =========================================================================================
@dataclass
class ShapeResult:
    """Figures of one shape, both sides."""

    shape: str
    precision: str
    batch: str
    layers: str
    parameters: int
    flops_per_step: float
    eval_loss: dict[str, float]
    step_seconds: dict[str, float]
    cpu_seconds: dict[str, float]
    all_step_seconds: dict[str, list[float]]
    steal_fraction: float
    tokens_per_s: dict[str, float]
    mfu: dict[str, float]
    memory: dict[str, dict]
    ratio: float
    classes: dict[str, str]
    attention: dict[str, str]
    profiles: dict[str, str] = field(default_factory=dict)


def bench_shape(
    shape: str, precision: str, args: argparse.Namespace, peak_gflops: float
) -> ShapeResult:
    """Both sides of one shape in one precision, interleaved; medians of the timed steps."""
    context = mp.get_context("spawn")
    config = model_config(shape, args.layers, args.dropout, args.tiny)
    target = args.target_len if config.form == "encoder-decoder" else args.seq
    sides: dict[str, _Side] = {}
    try:
        for side in SIDES:  # built one after the other: the builds do not compete
            job = Job(
                side,
                shape,
                args.batch,
                args.seq,
                target,
                args.layers,
                args.dropout,
                args.tiny,
                args.device,
                args.threads,
                precision=precision,
                triform_loss=args.triform_loss,
                optimizer=args.optimizer,
                keep_freed_memory=args.allocator == "kept"
                or (args.allocator == "trainers" and side == "triform"),
            )
            sides[side] = _Side(job, context)
        counts = {s: sides[s].info["parameters"] for s in SIDES}
        if counts["triform"] != counts["transformers"]:
            raise AssertionError(f"{shape}: parameter counts differ: {counts}")
        losses = {s: sides[s].info["eval_loss"] for s in SIDES}
        for side in SIDES:
            sides[side].ask(("warmup", args.warmup))
        times: dict[str, list[float]] = {s: [] for s in SIDES}
        cpu: dict[str, list[float]] = {s: [] for s in SIDES}
        steal_before = _steal_ticks()
        started = time.perf_counter()
        for repeat in range(args.repeats):
            order = SIDES if repeat % 2 == 0 else SIDES[::-1]
            for side in order:
                for wall, used in sides[side].ask(("steps", args.steps)):
                    times[side].append(wall)
                    cpu[side].append(used)
            print(
                f"  {shape} {precision} repeat {repeat + 1}/{args.repeats}: "
                + ", ".join(f"{s} {statistics.median(times[s]):.3f} s/step" for s in SIDES),
                flush=True,
            )
        steal = _steal_fraction(steal_before, time.perf_counter() - started)
        memory = {s: sides[s].ask(("memory",)) for s in SIDES}
        profiles = {}
        if args.profile:
            profiles = {s: sides[s].ask(("profile", args.profile_steps, 30)) for s in SIDES}
    finally:
        for side in sides.values():
            side.close()
    info = sides["triform"].info
    median = {s: statistics.median(times[s]) for s in SIDES}
    tokens = info["tokens_per_step"]
    flops = info["flops_per_step"]
    depth = str(config.num_layers)
    if config.form == "encoder-decoder":
        depth += f"+{config.decoder_layers}"
    return ShapeResult(
        shape=shape,
        precision=precision,
        batch=(
            f"{args.batch}x{args.seq}"
            + (f" -> {target}" if config.form == "encoder-decoder" else "")
        ),
        layers=depth,
        parameters=counts["triform"],
        flops_per_step=flops,
        eval_loss=losses,
        step_seconds=median,
        cpu_seconds={s: statistics.median(cpu[s]) for s in SIDES},
        all_step_seconds=times,
        steal_fraction=steal,
        tokens_per_s={s: tokens / median[s] for s in SIDES},
        mfu={s: flops / median[s] / (peak_gflops * 1e9) for s in SIDES},
        memory=memory,
        ratio=median["transformers"] / median["triform"],
        classes={s: sides[s].info["kind"] for s in SIDES},
        attention={s: sides[s].info["attn"] for s in SIDES},
        profiles=profiles,
    )


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def report(results: list[ShapeResult], peaks: dict[str, float]) -> str:
    """A markdown table of the results."""
    lines = [
        "| shape | precision | batch | layers | params | side | s/step | CPU s/step | tokens/s | "
        "MFU | peak memory MiB (start) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for side in SIDES:
            m = r.memory[side]
            peak = m.get("cuda_peak_mib", m.get("rss_peak_mib"))
            lines.append(
                f"| {r.shape} | {r.precision} | {r.batch} | {r.layers} | "
                f"{r.parameters / 1e6:.1f}M | {side} | "
                f"{r.step_seconds[side]:.3f} | {r.cpu_seconds[side]:.2f} | "
                f"{r.tokens_per_s[side]:,.0f} | "
                f"{100 * r.mfu[side]:.1f}% | {_mib(peak)} "
                f"({_mib(m.get('rss_start_mib'))}) |"
            )
    lines.append("")
    lines.append(
        "| shape | precision | triform / transformers (tokens/s) | same, CPU time | steal | "
        "eval loss triform / transformers |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        cpu_ratio = r.cpu_seconds["transformers"] / r.cpu_seconds["triform"]
        lines.append(
            f"| {r.shape} | {r.precision} | {r.ratio:.3f} | {cpu_ratio:.3f} | "
            f"{100 * r.steal_fraction:.1f}% | "
            f"{r.eval_loss['triform']:.5f} / {r.eval_loss['transformers']:.5f} |"
        )
    lines.append("\nmatmul peak: " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peaks.items()))
    return "\n".join(lines)


def curve_table(metrics_path: str) -> str:
    """Markdown table of a pretraining run's validation curve from its ``metrics.jsonl``:
    step, seconds since the loop started, validation loss, train loss and tokens/s nearest
    before it.

    The loop's start is not logged; it is recovered from the first train record, whose
    ``tokens_per_s`` covers the window since the start (``log_every`` steps).
    """
    path = Path(metrics_path)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r["split"] == "train"]
    first = train[0]
    run = json.loads((path.parent / "run.json").read_text())
    tokens_per_step = run["train"]["batch_size"] * run["data"]["seq_len"]  # the global batch
    start = first["time"] - first["step"] * tokens_per_step / first["tokens_per_s"]
    lines = [
        "| step | seconds | val loss | val accuracy | train loss | train tokens/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        if r["split"] != "val":
            continue
        before = [t for t in train if t["step"] <= r["step"]]
        last = before[-1] if before else first
        lines.append(
            f"| {r['step']} | {r['time'] - start:.0f} | {r['loss']:.3f} | "
            f"{r.get('accuracy', float('nan')):.3f} | {last['loss']:.3f} | "
            f"{last['tokens_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (source)")
    parser.add_argument(
        "--target-len", type=int, default=32, help="decoder tokens (encoder-decoder)"
    )
    parser.add_argument("--layers", type=int, help="override the preset's depth")
    parser.add_argument("--dropout", type=float, help="override dropout (default: preset's)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per side per repeat")
    parser.add_argument("--repeats", type=int, default=8, help="interleaved repeats")
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "bf16"],
        help="precisions to run (default: fp32, and bf16 where the hardware has it natively)",
    )
    parser.add_argument("--triform-loss", choices=["fused", "logits"], default="fused")
    parser.add_argument("--optimizer", choices=["fused", "loop"], default="fused")
    parser.add_argument(
        "--allocator",
        choices=["trainers", "kept", "system"],
        default="trainers",
        help="glibc malloc as each library's trainer leaves it (triform keeps freed memory, "
        "runtime.allocator; transformers does not), or kept / system on both sides",
    )
    parser.add_argument("--peak", type=float, help="fp32 matmul peak GFLOP/s (default: measure)")
    parser.add_argument("--peak-bf16", type=float, help="bf16 matmul peak GFLOP/s (ditto)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models: a smoke run")
    parser.add_argument(
        "--quick", action="store_true", help="tiny models, 1 round, 4x32 tokens: a smoke run"
    )
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--curve", metavar="METRICS_JSONL", help="only print the validation curve of a run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tiny, args.warmup, args.repeats = True, 1, 1
        args.batch, args.seq, args.target_len = 4, 32, 8
        args.peak, args.peak_bf16 = args.peak or 100.0, args.peak_bf16 or 100.0
    if args.precision is None:
        from triform.runtime.precision import auto_precision

        native = auto_precision(args.device) == "bf16"
        args.precision = ["fp32", "bf16"] if native else ["fp32"]
    return args


def main(argv: list[str] | None = None) -> list[ShapeResult]:
    args = parse_args(argv)
    if args.curve:
        print(curve_table(args.curve))
        return []
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}, "
        f"allocator: {args.allocator}",
        flush=True,
    )
    # each precision's MFU is against the matmul peak in that precision
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    given = {"fp32": args.peak, "bf16": args.peak_bf16}
    peaks: dict[str, float] = {}
    for precision in args.precision:
        peaks[precision] = given[precision] or measure_peak(
            dtype=dtypes[precision], device=args.device, verbose=True
        )
        print(f"matmul peak {precision}: {peaks[precision]:.1f} GFLOP/s", flush=True)
    results = []
    for shape, precision in [(s, p) for p in args.precision for s in args.shapes]:
        result = bench_shape(shape, precision, args, peaks[precision])
        results.append(result)
        for side in SIDES:
            print(
                f"  {shape:9s} {precision} {side:12s} {result.tokens_per_s[side]:9,.0f} tokens/s"
                f"  MFU {100 * result.mfu[side]:5.1f}%  memory {result.memory[side]}",
                flush=True,
            )
        print(f"  {shape} {precision}: ratio triform/transformers {result.ratio:.3f}", flush=True)
        for side, table in result.profiles.items():
            print(f"\n--- profile: {shape} {side} ---\n{table}", flush=True)
    for precision in args.precision:  # a shared machine's peak drifts: the best of two
        if given[precision]:
            continue
        after = measure_peak(dtype=dtypes[precision], device=args.device, verbose=True)
        print(f"matmul peak {precision} after: {after:.1f} GFLOP/s", flush=True)
        if after > peaks[precision]:
            for r in results:
                if r.precision == precision:
                    r.mfu = {s: m * peaks[precision] / after for s, m in r.mfu.items()}
            peaks[precision] = after
    print()
    print(report(results, peaks))
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "torch": torch.__version__,
                    "results": [asdict(r) for r in results],
                },
                f,
                indent=2,
            )
    return results


if __name__ == "__main__":
    main()
