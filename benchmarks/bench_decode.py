"""Decoding speed of triform against ``transformers``' ``generate`` on the same GPT-2, and
against the memory-bandwidth bound of the machine.

    python benchmarks/bench_decode.py [--prompt 32] [--new 64] [--beams 1 4] [--repeats 6]
        [--threads N] [--dtype float32|bfloat16] [--layers N] [--quick] [--json out.json]

A GPT-2 (124M, random weights from the preset, seed 0) is converted with
``triform.interop.hf.to_hf`` into ``GPT2LMHeadModel`` (same weights, ``attn_implementation
="sdpa"``). For each beam count both sides continue the same random prompt by exactly
``--new`` tokens (no stop token: ``min_new_tokens = max_new_tokens``), greedy for 1 beam,
beam search otherwise; their outputs must be token-identical (checked every run). Runs
alternate triform / transformers ``--repeats`` times (order flipping each round) after one
untimed warm-up each; the figure is the median. Tokens/s counts the new tokens of the
returned row (one row: batch 1), prompt reading included in the time.

The bound: decoding one token at batch 1 reads every weight that takes part in a matmul
once (the non-embedding weights and the vocabulary projection; the position table only
gives one row). ``bytes per token / copy bandwidth`` is the least time a token can take,
with the bandwidth measured here as the best of 5 ``dst.copy_(src)`` of a 256 MiB tensor
(bytes read + bytes written). Beam search with K beams reads the weights once for K rows, so
its bound is the same tokens/s of the kept sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import triform  # noqa: E402
from triform.inference.generate import generate  # noqa: E402

QUICK = {"hidden_size": 64, "num_heads": 2, "ffn_size": 128, "num_layers": 2, "vocab_size": 512}


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Best bytes/s of ``dst.copy_(src)`` over ``repeats`` runs (read + write counted)."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = max(best, 2 * src.numel() * 4 / (time.perf_counter() - start))
    return best


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of the weights a batch-1 decoding step reads: every distinct parameter except
    the position table (one row of it is read), the tied token table counted once (as the
    vocabulary projection)."""
    total = 0
    for name, param in model.named_parameters():  # distinct tensors only
        if "embeddings.position" in name:
            continue
        total += param.numel() * param.element_size()
    return total


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    from triform.interop import hf

    overrides: dict[str, Any] = {"dropout": 0.0, "attention_dropout": 0.0}
    if args.quick:
        overrides.update(QUICK, bos_token_id=0, eos_token_id=0)
    if args.layers:
        overrides["num_layers"] = args.layers
    config = triform.presets.get("gpt2", **overrides)
    torch.manual_seed(0)
    ours = triform.build_model(config).eval()
    theirs = hf.to_hf(ours).eval()
    theirs.set_attn_implementation("sdpa")
    dtype = getattr(torch, args.dtype)
    return ours.to(dtype), theirs.to(dtype)


def run_once(side: str, model: torch.nn.Module, ids: torch.Tensor, beams: int, new: int):
    """(seconds, output ids) of one generation."""
    kw = {"max_new_tokens": new, "min_new_tokens": new, "num_beams": beams}
    start = time.perf_counter()
    if side == "triform":
        out = generate(model, ids, torch.ones_like(ids), **kw)
    else:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, **kw)
    return time.perf_counter() - start, out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, theirs = build(args)
    bandwidth = copy_bandwidth(args.bandwidth_mib)
    per_token = weight_bytes_per_token(ours)
    bound = bandwidth / per_token
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, load "
        f"{os.getloadavg()}\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s; weights read per "
        f"token {per_token / 1e6:.1f} MB; bound {bound:.1f} tokens/s",
        flush=True,
    )
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, ours.config.vocab_size, (1, args.prompt), generator=g)
    sides = {"triform": ours, "transformers": theirs}
    results = []
    for beams in args.beams:
        outputs = {s: run_once(s, m, ids, beams, args.new)[1] for s, m in sides.items()}
        identical = torch.equal(outputs["triform"], outputs["transformers"])
        times: dict[str, list[float]] = {s: [] for s in sides}
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
            for side in order:
                times[side].append(run_once(side, sides[side], ids, beams, args.new)[0])
        median = {s: statistics.median(t) for s, t in times.items()}
        rate = {s: args.new / median[s] for s in sides}
        result = {
            "beams": beams,
            "identical": identical,
            "seconds": median,
            "tokens_per_s": rate,
            "ratio": median["transformers"] / median["triform"],
            "fraction_of_bound": {s: rate[s] / bound for s in sides},
        }
        results.append(result)
        print(
            f"  beams {beams}: triform {rate['triform']:.1f} tokens/s, transformers "
            f"{rate['transformers']:.1f} tokens/s, ratio {result['ratio']:.3f}, of the bound "
            f"{100 * result['fraction_of_bound']['triform']:.0f}% / "
            f"{100 * result['fraction_of_bound']['transformers']:.0f}%, token-identical "
            f"{identical}",
            flush=True,
        )
    print()
    print("| decoding | triform tokens/s | transformers tokens/s | **triform / transformers** "
          "| of the bound (triform / transformers) | token-identical |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        name = "greedy" if r["beams"] == 1 else f"beam {r['beams']}"
        print(
            f"| {name}, batch 1, {args.prompt} + {args.new} tokens | "
            f"{r['tokens_per_s']['triform']:.1f} | {r['tokens_per_s']['transformers']:.1f} | "
            f"**{r['ratio']:.3f}** | {100 * r['fraction_of_bound']['triform']:.0f}% / "
            f"{100 * r['fraction_of_bound']['transformers']:.0f}% | {r['identical']} |"
        )
    print(f"\nbound: {bandwidth / 1e9:.1f} GB/s / {per_token / 1e6:.1f} MB = {bound:.1f} tokens/s")
    return {
        "args": vars(args),
        "torch": torch.__version__,
        "bandwidth_bytes_per_s": bandwidth,
        "weight_bytes_per_token": per_token,
        "bound_tokens_per_s": bound,
        "results": results,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens per generation")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=6, help="interleaved timed runs")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, help="override GPT-2's 12 layers")
    parser.add_argument("--bandwidth-mib", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="a tiny GPT-2: a smoke run")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompt, args.new, args.repeats = min(args.prompt, 8), min(args.new, 8), 2
        args.bandwidth_mib = min(args.bandwidth_mib, 16)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = bench(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
