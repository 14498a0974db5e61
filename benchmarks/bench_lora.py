"""Parameter-efficient fine-tuning on CPU: full fine-tuning, a frozen body and LoRA, side by side.

    python benchmarks/bench_lora.py [--preset bert-base] [--seq 64] [--batch 8]
                                    [--warmup 2] [--steps 5] [--repeats 1] [--tiny]

A randomly initialised model of the preset's real size (bert-base: 110M parameters, its
30,522-token vocabulary) is saved as a model folder, and each variant fine-tunes it for
sequence classification through ``triform.finetune.finetune`` itself, each in a fresh
process (so that its resident memory is its own), one after another, ``--repeats`` rounds:

- ``full``: every parameter trains (the default);
- ``freeze body``: ``train.freeze = "body"``, only the head trains;
- ``LoRA``: ``[lora] r = 8, alpha = 16, targets = ["q", "v"]`` (Hu et al.'s choice), the
  adapters and the head train.

Per variant: the trainable parameters, the AdamW state's bytes after the last step, the peak
resident memory while training (the process's high-water mark, reset once the run is set up:
``/proc/self/clear_refs``), and the median seconds of the steps after ``--warmup``. Each
worker's run class records when each step starts and stops the run at its end-of-run
evaluation, before the final checkpoint is written. fp32, ``--threads`` threads; prints a
Markdown table ready for BENCHMARKS.md. ``--tiny``: bert-tiny's shape, seconds in all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

VARIANTS = {  # the table's row -> the variant's --set overrides
    "full": [],
    '`train.freeze = "body"`': ['train.freeze="body"'],
    "`[lora]` r = 8 on q, v": ["lora.r=8", "lora.alpha=16", 'lora.targets=["q", "v"]'],
}
WORDS = ["apple", "river", "stone", "cloud", "green", "music", "table", "window", "garden",
         "silver", "paper", "candle", "forest", "bridge", "ocean", "winter"]  # fmt: skip


@dataclass
class Result:
    variant: str
    trainable: int
    total: int
    optimizer_bytes: int
    peak_mb: float
    step_seconds: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bert-base")
    parser.add_argument("--seq", type=int, default=64, help="tokens per example")
    parser.add_argument("--batch", type=int, default=8, help="examples per step")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--steps", type=int, default=5, help="steps timed")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the three variants")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="bert-tiny's shape: a smoke run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a variant, in its own process
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- the main process -----------------------------------------------------------------------
def prepare(args: argparse.Namespace, folder: Path) -> None:
    """The base model folder (random weights of the preset's size), its tokenizer and the
    training file, in ``folder``."""
    import torch

    from triform import presets
    from triform.models import build_model
    from triform.runs import save_weights, write_json
    from triform.tokenizers import fit_to_tokenizer, save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer([" ".join(WORDS)] * 20, kind="wordpiece", vocab_size=100,
                                family="bert")  # fmt: skip
    config = presets.get(args.preset)
    vocab = config.vocab_size  # the preset's own: a tokenizer may use fewer ids
    config = fit_to_tokenizer(config, tokenizer).replace(vocab_size=vocab)
    torch.manual_seed(0)
    base = folder / "base"
    base.mkdir(parents=True)
    model = build_model(config)
    write_json(base / "model.json", config.to_dict())
    save_weights(model, base / "model.safetensors")
    save_tokenizer(tokenizer, base / "tokenizer.json")
    rng = random.Random(0)
    rows = [
        {"text": " ".join(rng.choices(WORDS, k=args.seq)), "label": rng.choice(["a", "b"])}
        for _ in range(args.batch * (args.warmup + args.steps))
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.tiny:
        args.preset, args.seq, args.batch, args.warmup, args.steps = "bert-tiny", 16, 2, 1, 1
    if args.worker:
        worker(args)
        return []
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        folder = Path(tmp)
        prepare(args, folder)
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            for name in VARIANTS:
                out = folder / "result.json"
                command = [sys.executable, __file__, *(argv or sys.argv[1:]), "--worker", name,
                           "--dir", str(folder)]  # fmt: skip
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                runs[name].append(json.loads(out.read_text()))
    results = []
    for name, measured in runs.items():
        first = measured[0]
        results.append(
            Result(
                name,
                first["trainable"],
                first["total"],
                first["optimizer_bytes"],
                statistics.median(m["peak_mb"] for m in measured),
                statistics.median(s for m in measured for s in m["step_seconds"]),
            )
        )
    print(table(results))
    return results


def table(results: list[Result]) -> str:
    full = results[0]
    lines = [
        "| fine-tuning | trainable parameters | AdamW state (MB) | peak RSS training (MB) "
        "| step (s) | speed vs full |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        share = 100 * r.trainable / r.total
        lines.append(
            f"| {r.variant} | {r.trainable:,} ({share:.3g} %) | {r.optimizer_bytes / 2**20:,.2f} "
            f"| {r.peak_mb:,.0f} | {r.step_seconds:.2f} "
            f"| {full.step_seconds / r.step_seconds:.2f}× |"
        )
    return "\n".join(lines)


# -- one variant, in its own process --------------------------------------------------------
class _Measured(Exception):
    """Raised at the end-of-run evaluation: the steps are measured, nothing more is needed."""


def _high_water_mb() -> float:
    """The process's peak resident memory (VmHWM) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    import torch

    import triform.finetune.trainer as trainer_module
    from triform.finetune import finetune, load_finetune_config

    folder = Path(args.dir)
    seen: dict = {"starts": []}

    class TimedRun(trainer_module.FinetuneRun):
        def micro_batches(self, step: int):
            if not seen["starts"]:  # set up: the peak from here on is training's
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")
            seen["starts"].append(time.perf_counter())
            return super().micro_batches(step)

        def evaluate(self, model, wrapped, step):
            seen["end"] = time.perf_counter()
            seen["peak_mb"] = _high_water_mb()
            seen["model"] = model
            raise _Measured

    build = trainer_module.build_optimizer

    def keep_optimizer(model, cfg, groups):
        seen["optimizer"] = build(model, cfg, groups)
        return seen["optimizer"]

    trainer_module.FinetuneRun = TimedRun  # finetune() builds its run and optimizer by name
    trainer_module.build_optimizer = keep_optimizer
    tree = {
        "model": {"source": str(folder / "base")},
        "task": {"kind": "classification", "train": str(folder / "train.jsonl"),
                 "max_length": args.seq},
        "train": {"out_dir": str(folder / "run"), "steps": args.warmup + args.steps,
                  "batch_size": args.batch, "eval_every": 10**6, "log_every": 10**6,
                  "checkpoint_every": 10**6, "threads": args.threads, "precision": "fp32",
                  "progress": False, "tensorboard": False},
        "optim": {"lr": 1e-4},
    }  # fmt: skip
    with contextlib.suppress(_Measured):  # the run stops once its steps are measured
        finetune(load_finetune_config(tree=tree, overrides=VARIANTS[args.worker]))
    starts = [*seen["starts"], seen["end"]]
    seconds = [b - a for a, b in zip(starts, starts[1:], strict=False)][args.warmup :]
    state = seen["optimizer"].state.values()
    tensors = [t for s in state for t in s.values() if isinstance(t, torch.Tensor)]
    params = {id(p): p for p in seen["model"].parameters()}.values()
    result = {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
        "optimizer_bytes": sum(t.numel() * t.element_size() for t in tensors),
        "peak_mb": seen["peak_mb"],
        "step_seconds": seconds,
    }
    (folder / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
