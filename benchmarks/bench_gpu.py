"""GPT-2 124M pretraining throughput and MFU on one CUDA GPU: bf16, eager and compiled.

    python benchmarks/bench_gpu.py [--batch 16] [--seq 1024] [--steps 30] [--warmup 10]
        [--no-compile] [--peak-tflops 989]

The step is the library's own: ``triform.build_model`` of the ``gpt2`` preset (124M
parameters, vocabulary 50257), bf16 autocast (:mod:`triform.runtime.precision`), fused AdamW
and gradient clipping (:mod:`triform.train.optim`), SDPA attention (flash on GPUs that have
it), optionally ``torch.compile``. Tokens are random (throughput does not depend on them).
Each variant runs ``--warmup`` untimed steps (compilation included), then ``--steps`` timed
steps, synchronised once at the end. MFU is the model FLOPs per step (the formula of
:mod:`bench_train`) over the step time, divided by the bf16 matmul peak measured on this GPU
(:mod:`bench_matmul`) or ``--peak-tflops`` (a datasheet figure; the table says which).
Prints Markdown ready for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import triform  # noqa: E402
from bench_matmul import measure_peak  # noqa: E402
from bench_train import model_flops_per_step  # noqa: E402
from triform.runtime.precision import autocast_context  # noqa: E402
from triform.train.optim import OptimConfig, build_optimizer, clip_gradients  # noqa: E402


def run_variant(args: argparse.Namespace, compiled: bool) -> dict:
    """tokens/s, step ms, model TFLOP/s and peak memory of one variant."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    config = triform.presets.get("gpt2", max_positions=max(1024, args.seq))
    model = triform.build_model(config).to(device)
    optimizer = build_optimizer(model, OptimConfig(lr=6e-4))  # fused on CUDA
    assert optimizer.defaults.get("fused"), "expected fused AdamW on CUDA"
    step_model = torch.compile(model) if compiled else model
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]  # (B, T) each

    def step() -> torch.Tensor:
        with autocast_context("bf16", device):
            logits = step_model(inputs).logits  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        clip_gradients(model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    flops = model_flops_per_step(model, {"input_ids": inputs})
    return {
        "params": model.num_parameters(),
        "tokens_per_s": args.batch * args.seq / seconds,
        "step_ms": 1000 * seconds,
        "tflops": flops / seconds / 1e12,
        "memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "loss": loss.item(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak (default: measure)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU")
    name = torch.cuda.get_device_name()
    if args.peak_tflops:
        peak, source = args.peak_tflops, "given"
    else:
        gflops = measure_peak((4096, 8192), dtype=torch.bfloat16, device="cuda")
        peak, source = gflops / 1000, "measured bf16 matmul"
    rows = []
    for compiled in (False,) if args.no_compile else (False, True):
        rows.append({"compiled": compiled, **run_variant(args, compiled)})
    print(
        f"GPT-2 124M ({rows[0]['params']:,} parameters), batch {args.batch} x {args.seq} "
        f"tokens, bf16 autocast, fused AdamW, on {name} (torch {torch.__version__}); MFU "
        f"against {peak:.0f} TFLOP/s ({source})\n"
    )
    print("| torch.compile | tokens/s | step ms | model TFLOP/s | MFU | peak memory GB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {'yes' if row['compiled'] else 'no'} | {row['tokens_per_s']:,.0f} | "
            f"{row['step_ms']:.1f} | {row['tflops']:.1f} | {row['tflops'] / peak:.1%} | "
            f"{row['memory_gb']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()
