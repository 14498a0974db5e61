"""This machine's measured matrix-multiply peak, the denominator of model-FLOPs utilisation.

    python benchmarks/bench_matmul.py [--sizes 1024 2048 4096] [--repeats 5] [--dtype float32]

Times square ``n x n @ n x n`` products with ``torch.mm`` on all of torch's threads (or on
the GPU when there is one) and reports the best rate over ``--repeats`` runs of each size,
counting ``2 n^3`` floating-point operations per product. The best, not the mean: a peak is
what the hardware can do, and noise from other processes only ever makes a run slower.
``measure_peak()`` returns the highest rate in GFLOP/s for other benchmarks to import.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

DEFAULT_SIZES = (1024, 2048, 4096)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(
    n: int,
    *,
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    min_seconds: float = 0.2,
) -> float:
    """Best GFLOP/s of ``torch.mm`` on two ``n x n`` matrices over ``repeats`` timed runs.

    Each timed run repeats the product until it has lasted at least ``min_seconds`` (so small
    sizes are not dominated by timer resolution), after one untimed warm-up product.
    """
    device = torch.device(device)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    torch.mm(a, b, out=out)  # warm-up: thread pool, caches, kernel selection
    _sync(device)
    best = 0.0
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            count += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, 2.0 * n**3 * count / elapsed / 1e9)
    return best


def measure_peak(
    sizes: tuple[int, ...] | list[int] = DEFAULT_SIZES,
    *,
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    verbose: bool = False,
) -> float:
    """The highest ``torch.mm`` rate (GFLOP/s) over ``sizes``, each the best of ``repeats``."""
    best = 0.0
    for n in sizes:
        rate = matmul_rate(n, repeats=repeats, dtype=dtype, device=device)
        if verbose:
            print(f"  {n:5d} x {n:<5d} {rate:9.1f} GFLOP/s", flush=True)
        best = max(best, rate)
    return best


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"{args.dtype} matmul:",
        flush=True,
    )
    peak = measure_peak(
        args.sizes, repeats=args.repeats, dtype=dtype, device=args.device, verbose=True
    )
    print(f"peak: {peak:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_gflops": peak, "dtype": args.dtype, "device": args.device}, f)
    return peak


if __name__ == "__main__":
    main()
