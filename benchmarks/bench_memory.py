"""Peak memory of one training step with and without activation checkpointing, on CPU.

    python benchmarks/bench_memory.py [--layers 2] [--seq 512] [--batch 4] [--tiny]

A gpt2-medium-shaped decoder (width 1024, 16 heads, FFN 4096; ``--layers`` blocks, a small
vocabulary so that the blocks' activations, not the logits, dominate) runs one forward and
backward pass in a fresh process per variant, on one thread. The peak is the growth of the
process's resident memory during the step (with glibc's mmap threshold fixed, so freed
tensors leave resident memory; ``ru_maxrss`` after the step minus the resident
size before it, after a warm-up pass on a sliver of the batch), so parameters, inputs and
one-off set-up are not counted. Both variants start from the same
weights and inputs; the script checks that loss and gradients agree within 1e-5 (fp32) and
prints a Markdown table ready for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

import triform
from triform.runtime.distributed import checkpoint_blocks


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _step(args: argparse.Namespace, checkpointed: bool, queue) -> None:
    """One forward/backward pass in this (fresh) process; puts peak MB, seconds, loss and
    per-parameter gradient norms on ``queue``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = triform.presets.get(
        "gpt2",
        hidden_size=args.width,
        num_heads=args.heads,
        ffn_size=4 * args.width,
        num_layers=args.layers,
        vocab_size=args.vocab,
        max_positions=args.seq + 1,
        dropout=0.0,
        attention_dropout=0.0,
    )
    model = triform.build_model(config)
    if checkpointed:
        checkpoint_blocks(model)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1))  # (B, L + 1)
    model(ids[:1, :8]).logits.sum().backward()  # warm-up on a sliver: lazy imports, kernels
    model.zero_grad(set_to_none=True)
    before = _resident_mb()
    start = time.perf_counter()
    logits = model(ids[:, :-1]).logits  # (B, L, V)
    loss = F.cross_entropy(logits.reshape(-1, args.vocab), ids[:, 1:].reshape(-1))
    held = _resident_mb() - before  # what the forward pass keeps for the backward pass
    loss.backward()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    grads = [p.grad.norm().item() for p in model.parameters()]
    queue.put((held, peak_kb / 1024 - before, seconds, loss.item(), grads))


def measure(args: argparse.Namespace) -> dict[bool, tuple]:
    """{checkpointed: (MB held after the forward pass, peak MB, seconds, loss, grad
    norms)}, each in its own process."""
    context = mp.get_context("spawn")
    # A fixed mmap threshold: glibc then returns every large block to the system when it is
    # freed, so resident memory follows live tensors (its default, a threshold that grows
    # after frees, keeps freed activations resident and blurs the peak).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    results = {}
    for checkpointed in (False, True):
        queue = context.Queue()
        process = context.Process(target=_step, args=(args, checkpointed, queue))
        process.start()
        results[checkpointed] = queue.get(timeout=600)
        process.join()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args(argv)
    if args.tiny:
        args.width, args.heads, args.seq, args.batch = 64, 4, 64, 2
    return args


def main(argv: list[str] | None = None) -> dict[bool, tuple]:
    args = parse_args(argv)
    results = measure(args)
    (plain_held, plain_mb, plain_s, plain_loss, plain_grads) = results[False]
    (ckpt_held, ckpt_mb, ckpt_s, ckpt_loss, ckpt_grads) = results[True]
    loss_diff = abs(ckpt_loss - plain_loss) / abs(plain_loss)
    grad_diff = max(
        abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain_grads, ckpt_grads, strict=True)
    )
    print(
        f"{args.layers} blocks of width {args.width} ({args.heads} heads, FFN "
        f"{4 * args.width}), batch {args.batch} x {args.seq} tokens, vocabulary {args.vocab}, "
        f"fp32, 1 thread\n"
    )
    print(
        "| activation checkpointing | activations kept by the forward (MB) "
        "| step peak (MB) | step seconds | loss |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, held, peak, secs, loss in (
        ("off", plain_held, plain_mb, plain_s, plain_loss),
        ("on", ckpt_held, ckpt_mb, ckpt_s, ckpt_loss),
    ):
        print(f"| {name} | {held:.0f} | {peak:.0f} | {secs:.2f} | {loss:.6f} |")
    print(
        f"\nsaving: {1 - ckpt_held / plain_held:.0%} of the activations, "
        f"{1 - ckpt_mb / plain_mb:.0%} of the step's peak (which includes the gradients); "
        f"relative difference: loss {loss_diff:.1e}, gradient norms at most {grad_diff:.1e}"
    )
    if loss_diff > 1e-5 or grad_diff > 1e-5:
        print("MISMATCH: checkpointing changed the result", file=sys.stderr)
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
