"""Genre-3, the Shakespeare genre task of the transfer benchmark: is a passage
from a comedy, a tragedy or a history? Labels come from ``manifest.tsv``; whole plays are the
unit of every split, as ``../shared/data/README.md`` ("Genre-3") fixes them:

- test: 3 named plays per genre; validation: 1 named play per genre; train: the rest;
- a passage is ``words`` consecutive words of a play's body (the title and the list of
  persons left out) from a uniformly drawn start; each split has the same number of passages
  per genre, spread as evenly as possible over its plays;
- the pretraining corpus is every work of the folder except the test plays (with
  ``max_plays``, the tiny configuration: the training plays).

Writes into ``out`` (never into the project):

- ``train.csv``, ``validation.csv``, ``test.csv``: ``text,label`` rows, shuffled;
- ``train-{n}-s{seed}.csv``: ``n`` training passages per genre for each subset seed, nested
  (``train-16-s0`` is the first 16 of ``train-64-s0`` in each genre);
- ``icl_test.jsonl``, ``icl_pool.jsonl``: in-context learning examples (``input``,
  ``answer``, ``options``) from the test and train passages, cut to their first
  ``icl_words`` words so that 8 demonstrations fit a small GPT's positions;
- ``pretrain/``: the pretraining corpus, a folder of links to the works (what the configs'
  ``data.corpus`` points at), and ``pretrain_files.json``, the same as a list of paths;
- ``manifest.json``: every setting, the plays of each split and the row counts.

The same arguments give byte-identical files.

    python benchmarks/genre3_data.py --out /tmp/genre3
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"
GENRES = ("comedy", "tragedy", "history")
TEST_PLAYS = {
    "comedy": ("twelfth_night", "much_ado_about_nothing", "merchant_of_venice"),
    "tragedy": ("macbeth", "othello", "julius_caesar"),
    "history": ("henry_v", "richard_ii", "john"),
}
VALIDATION_PLAYS = {
    "comedy": ("midsummer_nights_dream",),
    "tragedy": ("coriolanus",),
    "history": ("henry_viii",),
}
SPLITS = ("train", "validation", "test")
# The body starts at the first act, scene, prologue or induction heading (or the "SCENE:"
# line that closes the list of persons); everything before it names the play's people.
BODY_START = re.compile(r"^(THE )?(ACT|SCENE|PROLOGUE|INDUCTION)\b", re.IGNORECASE)


def read_manifest(folder: Path) -> dict[str, str]:
    """Work name (file stem) -> genre, from ``manifest.tsv``."""
    path = folder / "manifest.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no manifest.tsv: the shared Shakespeare data")
    with path.open(encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {Path(row["file"]).stem: row["genre"] for row in rows}


def split_plays(genres: dict[str, str], max_plays: int | None = None) -> dict[str, dict]:
    """Split -> genre -> plays (sorted), the README's table; ``max_plays`` keeps at most
    that many plays per genre in each split (the tiny configuration)."""
    table: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for genre in GENRES:
        held_out = set(TEST_PLAYS[genre]) | set(VALIDATION_PLAYS[genre])
        missing = held_out - set(genres)
        if missing:
            raise ValueError(f"manifest.tsv lacks the Genre-3 plays {sorted(missing)}")
        table["test"][genre] = list(TEST_PLAYS[genre])
        table["validation"][genre] = list(VALIDATION_PLAYS[genre])
        table["train"][genre] = sorted(
            w for w, g in genres.items() if g == genre and w not in held_out
        )
    if max_plays is not None:
        for split in SPLITS:
            for genre in GENRES:
                table[split][genre] = table[split][genre][:max_plays]
    return table


def play_words(path: Path) -> list[str]:
    """The words of a play's body: whitespace-split, from its first heading on."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if BODY_START.match(line.strip())), 0)
    return " ".join(lines[start:]).split()


def draw_passages(
    plays: dict[str, list[str]], count: int, words: int, rng: random.Random
) -> list[str]:
    """``count`` passages of ``words`` words from ``plays`` (name -> words): an equal share
    per play (the remainder to plays drawn at random), each from a uniform start."""
    names = sorted(plays)
    shares = {name: count // len(names) for name in names}
    for name in rng.sample(names, count % len(names)):
        shares[name] += 1
    passages = []
    for name in names:
        body = plays[name]
        if len(body) < words:
            raise ValueError(f"{name} has {len(body)} words, fewer than a passage's {words}")
        for _ in range(shares[name]):
            start = rng.randrange(len(body) - words + 1)
            passages.append(" ".join(body[start : start + words]))
    return passages


def write_csv(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """``text,label`` rows, with Unix line ends (byte-identical on every platform)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")


def subset(rows: Sequence[tuple[str, str]], per_class: int, seed: int) -> list[tuple[str, str]]:
    """``per_class`` rows of each genre, drawn with ``seed``; a larger ``per_class`` with the
    same seed holds the smaller one's rows. Kept in the order of ``rows``."""
    rng = random.Random(f"subset-{seed}")
    keep: set[int] = set()
    for genre in GENRES:
        indices = [i for i, (_, label) in enumerate(rows) if label == genre]
        if per_class > len(indices):
            raise ValueError(
                f"{per_class} passages per genre asked for, {genre} has {len(indices)}"
            )
        rng.shuffle(indices)
        keep.update(indices[:per_class])
    return [row for i, row in enumerate(rows) if i in keep]


def build(
    folder: Path,
    out: Path,
    per_class: dict[str, int],
    words: int = 128,
    seed: int = 0,
    subsets: Sequence[int] = (16, 64, 256),
    subset_seeds: Sequence[int] = (0, 1, 2),
    icl_per_class: int = 100,
    icl_words: int = 32,
    max_plays: int | None = None,
) -> dict:
    """Write the task files into ``out``; returns what ``manifest.json`` holds."""
    genres = read_manifest(folder)
    table = split_plays(genres, max_plays)
    rng = random.Random(f"genre3-{seed}")
    cache: dict[str, list[str]] = {}
    splits: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS:
        rows = []
        for genre in GENRES:
            plays = {
                p: cache.setdefault(p, play_words(folder / f"{p}.txt")) for p in table[split][genre]
            }
            rows += [(text, genre) for text in draw_passages(plays, per_class[split], words, rng)]
        rng.shuffle(rows)
        splits[split] = rows
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_csv(out / f"{split}.csv", rows)
    for n in subsets:
        for s in subset_seeds:
            write_csv(out / f"train-{n}-s{s}.csv", subset(splits["train"], n, s))
    icl = {"icl_test": subset(splits["test"], icl_per_class, seed), "icl_pool": splits["train"]}
    for name, rows in icl.items():
        lines = [
            json.dumps(
                {
                    "input": " ".join(text.split()[:icl_words]),
                    "answer": genre,
                    "options": list(GENRES),
                }
            )  # fmt: skip
            for text, genre in rows
        ]
        (out / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    test_plays = {p for plays in table["test"].values() for p in plays}
    if max_plays is None:  # every work but the test plays
        corpus = sorted(w for w in genres if w not in test_plays)
    else:  # tiny: the training plays only
        corpus = sorted(p for plays in table["train"].values() for p in plays)
    files = [str((folder / f"{w}.txt").resolve()) for w in corpus]
    (out / "pretrain_files.json").write_text(json.dumps(files, indent=1) + "\n", encoding="utf-8")
    links = out / "pretrain"
    if links.exists():
        shutil.rmtree(links)
    links.mkdir()
    for path in files:
        (links / Path(path).name).symlink_to(path)
    manifest = {
        "task": "genre3",
        "seed": seed,
        "words": words,
        "per_class": per_class,
        "subsets": list(subsets),
        "subset_seeds": list(subset_seeds),
        "icl_per_class": icl_per_class,
        "icl_words": icl_words,
        "max_plays": max_plays,
        "plays": table,
        "pretrain_works": corpus,
        "rows": {split: len(rows) for split, rows in splits.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/genre3", help="output folder")
    p.add_argument("--data", default=str(SHAKESPEARE), help="the shakespeare folder")
    p.add_argument("--words", type=int, default=128, help="words per passage")
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--validation-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=300)
    p.add_argument("--subsets", default="16,64,256", help="passages per genre of the subsets")
    p.add_argument("--subset-seeds", default="0,1,2")
    p.add_argument("--icl-per-class", type=int, default=100)
    p.add_argument("--icl-words", type=int, default=32)
    p.add_argument("--max-plays", type=int, help="at most this many plays per genre and split")
    p.add_argument("--seed", type=int, default=0)
    return p


def ints(text: str) -> list[int]:
    """``"16,64"`` -> ``[16, 64]``."""
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    per_class = {
        "train": args.train_per_class,
        "validation": args.validation_per_class,
        "test": args.test_per_class,
    }
    try:
        manifest = build(
            Path(args.data), Path(args.out), per_class, args.words, args.seed,
            ints(args.subsets), ints(args.subset_seeds), args.icl_per_class, args.icl_words,
            args.max_plays,
        )  # fmt: skip
    except (OSError, ValueError) as err:
        raise SystemExit(f"genre3_data: {err}") from None
    print(json.dumps(manifest["rows"]))
    return manifest


if __name__ == "__main__":
    main()
