"""The report of the Genre-3 transfer benchmark (bench_genre.py): Markdown tables (mean ±
sample standard deviation over seeds) and the plot, from the records of results.jsonl."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from genre3_data import GENRES

ALL = 0  # "all passages" in a list of sizes
LAYERS = ("last", "second-to-last", "sum-last-four", "concat-last-four", "sum-all")


def of(records: list[dict], kind: str) -> list[dict]:
    """The records of one kind (pretrain, finetune, features, icl)."""
    return [r for r in records if r["kind"] == kind]


def mean_spread(values: Sequence[float]) -> str:
    """``0.512 ± 0.031`` (sample standard deviation; one value: just it)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def grouped(records: list[dict], *keys: str) -> dict[tuple, list[float]]:
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r.get("test_accuracy") is not None:
            groups.setdefault(tuple(r[k] for k in keys), []).append(r["test_accuracy"])
    return groups


def size_label(n: int) -> str:
    return "all" if n == ALL else str(n)


def report(records: list[dict], sizes: Sequence[int], manifest: dict) -> str:
    """The Markdown tables of the records, passages per genre in ``sizes``."""
    train_per_class = manifest["per_class"]["train"]
    lines = [f"Test accuracy on Genre-3 ({manifest['rows']['test']} test passages, chance "
             f"0.333); mean ± standard deviation over seeds; 'all' = {train_per_class} per genre.",
             ""]  # fmt: skip
    pretrain = of(records, "pretrain")
    if pretrain:
        lines += ["| pretraining | steps | minutes (set-up included) | tokens/s | "
                  "validation loss | validation accuracy |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in pretrain:
            val = r["val"] or {}
            cells = [r["family"], r["steps"], f"{r['minutes']:.1f}",
                     number(r["tokens_per_s"], ",.0f"), number(val.get("loss"), ".3f"),
                     number(val.get("accuracy"), ".3f")]  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines.append("")
    fine = grouped(of(records, "finetune"), "init", "n")
    inits = sorted({init for init, _ in fine}, key=init_order)
    if fine:
        lines += ["Fine-tuning, passages per genre:", "",
                  "| initialisation | " + " | ".join(size_label(n) for n in sizes) + " |",
                  "| --- |" + " --- |" * len(sizes)]  # fmt: skip
        for init in inits:
            cells = [mean_spread(fine[(init, n)]) if (init, n) in fine else "–" for n in sizes]
            lines.append(f"| {init} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += costs(of(records, "finetune"), inits)
    feats = grouped(of(records, "features"), "init", "layers", "n")
    if feats:
        lines += ["Feature-based (logistic regression on frozen mean-pooled features) against "
                  "fine-tuning, passages per genre:", "",
                  "| initialisation | features | "
                  + " | ".join(size_label(n) for n in sizes) + " |",
                  "| --- | --- |" + " --- |" * len(sizes)]  # fmt: skip
        for init in sorted({k[0] for k in feats}, key=init_order):
            for layers in (*LAYERS, "fine-tuning"):
                source = fine if layers == "fine-tuning" else feats
                keys = [(init, n) if layers == "fine-tuning" else (init, layers, n) for n in sizes]
                cells = [mean_spread(source[key]) if key in source else "–" for key in keys]
                lines.append(f"| {init} | {layers} | " + " | ".join(cells) + " |")
        lines.append("")
    for r in of(records, "icl"):
        shots = list(r["accuracy"])
        lines += [f"In-context learning of the pretrained GPT ({r['scoring']}, {r['examples']} "
                  "test passages, balanced; chance 0.333):", "",
                  "| shots | " + " | ".join(shots) + " |", "| --- |" + " --- |" * len(shots),
                  "| accuracy | " + " | ".join(f"{r['accuracy'][k]:.3f}" for k in shots) + " |",
                  "| answers (comedy/tragedy/history) | "
                  + " | ".join("/".join(str(r["answers"][k][g]) for g in GENRES)
                               for k in shots) + " |", ""]  # fmt: skip
    return "\n".join(lines)


def costs(fine: list[dict], inits: Sequence[str]) -> list[str]:
    """The cost of fine-tuning each initialisation (records that carry their parameter
    counts): what trains, the AdamW state it needs (two fp32 moments per trainable
    parameter), the training throughput and a run's wall time (evaluations included)."""
    rows = []
    for init in inits:
        mine = [r for r in fine if r["init"] == init and r.get("trainable_parameters")]
        if not mine:
            continue
        trainable, total = mine[0]["trainable_parameters"], mine[0]["parameters"]
        speeds = [r["tokens_per_s"] for r in mine if r.get("tokens_per_s")]
        speed = statistics.median(speeds) if speeds else None
        seconds = statistics.median(r["seconds"] for r in mine)
        share = f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
        cells = [init, share, f"{8 * trainable / 1e6:,.1f}", number(speed, ",.0f"),
                 f"{seconds:.0f}", str(len(mine))]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    header = ("| initialisation | trainable parameters | AdamW state (MB) | training tokens/s "
              "| seconds per run | runs |")  # fmt: skip
    return ["Cost of fine-tuning (medians over the runs):", "", header,
            "| --- | --- | --- | --- | --- | --- |", *rows, ""]  # fmt: skip


def number(value: float | None, spec: str) -> str:
    """``value`` formatted, or a dash when it was not measured."""
    return "–" if value is None else format(value, spec)


def init_order(init: str) -> tuple:
    family, _, kind = init.partition("-")
    return (family == "minilm", family, kind)


def plot(records: list[dict], sizes: Sequence[int], path: Path) -> None:
    """Accuracy against passages per genre, one line per initialisation (error bars: the
    spread over seeds); beside it the pretraining validation loss against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fine = grouped(of(records, "finetune"), "init", "n")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    positions = {n: i for i, n in enumerate(sizes)}
    for init in sorted({i for i, _ in fine}, key=init_order):
        ns = [n for n in sizes if (init, n) in fine]
        means = [statistics.mean(fine[(init, n)]) for n in ns]
        spread = [statistics.stdev(fine[(init, n)]) if len(fine[(init, n)]) > 1 else 0 for n in ns]
        style = "--" if init.endswith("random") else "-"
        left.errorbar([positions[n] for n in ns], means, yerr=spread, label=init, linestyle=style,
                      marker="o", capsize=3)  # fmt: skip
    left.axhline(1 / 3, color="grey", linewidth=0.8, linestyle=":", label="chance")
    left.set_xticks(range(len(sizes)), [size_label(n) for n in sizes])
    left.set_xlabel("labelled passages per genre")
    left.set_ylabel("test accuracy")
    left.set_title("Genre-3: fine-tuning")
    left.legend(fontsize=8)
    for r in of(records, "pretrain"):
        if r["curve"]:
            right.plot([p["minutes"] for p in r["curve"]], [p["loss"] for p in r["curve"]],
                       marker=".", label=r["family"])  # fmt: skip
    right.set_xlabel("minutes of pretraining")
    right.set_ylabel("validation loss")
    right.set_title("pretraining")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
