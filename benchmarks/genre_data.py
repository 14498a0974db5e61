"""The earlier 5-genre Shakespeare task, superseded by genre3_data.py (Genre-3) and kept to
reproduce the figures of docs/performance-notes.md, "Transfer": which genre (comedy,
tragedy, history, romance, poetry) a passage comes from, labels from ``manifest.tsv``, split
by whole works so that no play is in two splits.

Writes, into an output folder (never into the project):

- ``train.csv``, ``validation.csv``, ``test.csv``: ``text,label`` rows;
- ``icl_test.jsonl`` / ``icl_pool.jsonl``: the test and train passages for in-context
  learning (``input``, ``answer``, ``options``);
- ``pretrain_files.json``: the training works' paths, the pretraining corpus (held-out works
  are never pretrained on).

    python benchmarks/genre_data.py --out /tmp/genre
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"
GENRES = ["comedy", "tragedy", "history", "romance", "poetry"]
TEST_WORKS = ["twelfth_night", "macbeth", "henry_v", "tempest", "sonnets"]  # the data README's
VALIDATION_WORKS = [
    "much_ado_about_nothing",
    "othello",
    "richard_ii",
    "winters_tale",
    "rape_of_lucrece",
]
HEADER_LINES = 80  # title, author and the list of persons: they would name the work


def read_manifest(folder: Path) -> dict[str, str]:
    """Work name (file stem) -> genre."""
    with (folder / "manifest.tsv").open(encoding="utf-8") as handle:
        return {
            Path(row["file"]).stem: row["genre"] for row in csv.DictReader(handle, delimiter="\t")
        }


def passages(path: Path, lines_per_passage: int = 6) -> list[str]:
    """The work's body cut into passages of ``lines_per_passage`` non-empty lines."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    body = [line for line in lines[HEADER_LINES:] if line]
    return [
        " ".join(body[i : i + lines_per_passage])
        for i in range(0, len(body) - lines_per_passage + 1, lines_per_passage)
    ]


def build(folder: Path, out: Path, per_work: dict[str, int], seed: int = 0) -> dict[str, int]:
    """Write the splits; returns the number of passages in each."""
    genres = read_manifest(folder)
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "validation": [], "test": []}
    train_files = []
    for work, genre in sorted(genres.items()):
        split = (
            "test" if work in TEST_WORKS else "validation" if work in VALIDATION_WORKS else "train"
        )
        chunks = passages(folder / f"{work}.txt")
        rng.shuffle(chunks)
        splits[split] += [(text, genre) for text in chunks[: per_work[split]]]
        if split == "train":
            train_files.append(str(folder / f"{work}.txt"))
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        rng.shuffle(rows)
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    for name, split in (("icl_test", "test"), ("icl_pool", "train")):
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for text, genre in splits[split]:
                handle.write(json.dumps({"input": text, "answer": genre, "options": GENRES}) + "\n")
    (out / "pretrain_files.json").write_text(json.dumps(train_files, indent=1))
    return {name: len(rows) for name, rows in splits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/triform-genre", help="output folder")
    parser.add_argument("--data", default=str(SHAKESPEARE), help="the shakespeare folder")
    parser.add_argument("--train-per-work", type=int, default=120)
    parser.add_argument("--eval-per-work", type=int, default=100)
    args = parser.parse_args()
    folder = Path(args.data)
    if not (folder / "manifest.tsv").is_file():
        raise SystemExit(f"{folder} has no manifest.tsv: the shared Shakespeare data is needed")
    per_work = {
        "train": args.train_per_work,
        "validation": args.eval_per_work // 2,
        "test": args.eval_per_work,
    }
    counts = build(folder, Path(args.out), per_work)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
