"""Every command that writes, with its output pointed where it must not write: at one of its
own inputs, at an existing file, at a folder (or a file) of another kind of run, and at a
place no file can be created in. Each is refused with exit status 2 and one line on stderr,
before any work: every file of the shared runs and inputs is byte-identical afterwards, and
nothing new appears."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from test_finetune import family_tokenizers, keyword_rows, make_config, write_jsonl, write_toml
from test_nothing_lost import PRETRAIN
from triform.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*PRETRAIN, "train.steps=2"]  # the tiny pretraining run, two steps
SWEEP = """
[model]
preset = "gpt2"
max_positions = 64

[tokenizer]
kind = "char"
vocab_size = 96

[data]
corpus = "{corpus}"
seq_len = 16

[objective]
name = "causal-lm"

[train]
batch_size = 2

[sweep]
out_dir = "{out}"
tokens = [64]
models = [{{ num_layers = 1, hidden_size = 8, num_heads = 2 }}]
"""


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Everything the commands read, in one folder: a corpus, a pretraining run, a fine-tuned
    run, an HF folder, a tokenizer, text, table, prompt and ICL files, a sweep config and a
    results file with its fit."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("world")
    w = {"root": root, "corpus": root / "corpus"}
    w["corpus"].mkdir()
    texts = list(topics.values())
    for i in range(3):
        (w["corpus"] / f"doc{i}.txt").write_text("\n".join(texts[i * 3 : (i + 1) * 3])[:5000])
    w["pretrained"] = root / "pretrained"
    paths = [f"data.corpus={json.dumps(str(w['corpus']))}"]
    paths += [f"train.out_dir={json.dumps(str(w['pretrained']))}"]
    w["pretrain_sets"] = sets([*TINY, *paths[:1]])  # type: ignore[assignment]
    assert main(["pretrain", *sets([*TINY, *paths])]) == 0
    toks = family_tokenizers(root / "tok")
    data = write_jsonl(root / "train.jsonl", keyword_rows(16, 0))
    task = {"kind": "classification", "train": data, "validation": data}
    w["train"] = Path(data)
    w["ft_toml"] = Path(
        write_toml(root / "ft.toml", make_config(root, "bert-tiny", toks["bert"], task))
    )
    assert main(["finetune", str(w["ft_toml"])]) == 0
    w["finetuned"] = root / "run"
    w["hf"] = root / "hf"
    assert main(["convert", str(w["pretrained"]), str(w["hf"]), "--to", "hf"]) == 0
    w["tokenizer"] = w["pretrained"] / "tokenizer.json"
    w["texts"] = root / "texts.txt"
    w["texts"].write_text("def f(x):\nreturn x\n")
    w["lines"] = root / "lines.npy"  # text, named as features' outputs are
    w["lines"].write_text("def f(x):\nreturn x\n")
    w["table"] = root / "table.csv"
    w["table"].write_text("text\napple river\n")
    w["task"] = root / "icl.jsonl"
    w["task"].write_text(json.dumps({"input": "a", "answer": "b", "options": ["b", "c"]}) + "\n")
    w["sweep"] = root / "sweep.toml"
    w["sweep"].write_text(SWEEP.format(corpus=w["corpus"], out=root / "sweep"))
    rows = [
        {"params": n, "tokens": d, "loss": 1.7 + 400 / n**0.34 + 410 / d**0.28}
        for n in (1e5, 3e5, 1e6)
        for d in (1e7, 3e7)
    ]
    w["results"] = root / "fits" / "results.jsonl"
    w["results"].parent.mkdir()
    w["results"].write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["scaling", "fit", str(w["results"]), "--bootstrap", "0", "--starts", "2"]
    assert main([*args, "--no-plots"]) == 0
    w["fit"] = w["results"].parent / "fit.json"
    w["existing"] = root / "existing.npy"  # a name every command would write
    w["existing"].write_text("not an output\n")
    return w


def state(root: Path) -> dict[str, str]:
    """Every path under ``root`` and a hash of each file's bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


# How each command is pointed at an output: (its arguments with OUT where the output goes,
# extra arguments when the output is a file that must be replaced, what OUT is: "file" or
# "folder").
COMMANDS = {
    "pretrain": (["pretrain", "{pretrain_sets}", "--set", "train.out_dir=OUT"], "folder"),
    "finetune": (["finetune", "{ft_toml}", "--set", "train.out_dir=OUT"], "folder"),
    "predict": (["predict", "{finetuned}", "--input", "{table}", "--out", "OUT"], "file"),
    "convert": (["convert", "{hf}", "OUT", "--to", "triform"], "folder"),
    "features": (["features", "{pretrained}", "--input", "{lines}", "--out", "OUT"], "file"),
    "attention": (["attention", "{pretrained}", "--text", "x", "--out", "OUT"], "file"),
    "generate": (["generate", "{pretrained}", "--input", "{texts}", "--out", "OUT"], "file"),
    "tokenizer": (["tokenizer", "train", "{texts}", "--kind", "char", "--out", "OUT"], "file"),
    "data": (
        ["data", "prepare", "{corpus}", "--tokenizer", "{tokenizer}", "--out", "OUT"],
        "folder",
    ),
    "sweep": (["scaling", "sweep", "{sweep}", "--set", "sweep.out_dir=OUT"], "folder"),
    "fit": (["scaling", "fit", "{results}", "--no-plots", "--out", "OUT"], "folder"),
    "plan": (["scaling", "plan", "--flops", "1e15", "--fit", "{fit}", "--out", "OUT"], "file"),
    "evaluate": (
        ["evaluate", "icl", "{pretrained}", "--task", "{task}", "--shots", "0", "--out", "OUT"],
        "file",
    ),
}

# Where each command is pointed when the output is one of its own inputs (keys of `world`,
# or a path under one), with --overwrite, so that only that rule can refuse it.
OWN_INPUT = {
    "pretrain": "corpus",  # the run folder would be read as text by the next run
    "finetune": "train",
    "predict": "table",
    "convert": "hf",
    "features": "lines",
    "attention": "pretrained/model.json",  # the model it reads
    "generate": "texts",
    "tokenizer": "texts",
    "data": "corpus",
    "sweep": "corpus",
    "fit": "results",
    "plan": "fit",
    "evaluate": "task",
}
# A folder (a file of one, for file outputs) that belongs to another kind of run.
OTHER_KIND = {"folder": "finetuned", "file": "finetuned/results.json"}
OTHER_KIND_OF = {
    "finetune": "pretrained",  # a fine-tune's other kind
    "features": "finetuned/best/features.npy",  # a new file inside a fine-tuned model
}


def resolve(w: dict[str, Path], key: str) -> Path:
    head, _, rest = key.partition("/")
    return w[head] / rest if rest else w[head]


def argv(w: dict[str, Path], name: str, out: Path, overwrite: bool) -> list[str]:
    args, kind = COMMANDS[name]
    line: list[str] = []
    for arg in args:
        if arg == "{pretrain_sets}":
            line += list(w["pretrain_sets"])  # type: ignore[arg-type]
            continue
        arg = arg.format(**{k: v for k, v in w.items() if k != "pretrain_sets"})
        if "OUT" in arg:
            arg = arg.replace("OUT", json.dumps(str(out)) if "=" in arg else str(out))
        line.append(arg)
    # a sweep has no --overwrite: running it again resumes it
    return line + (["--overwrite"] if overwrite and name != "sweep" else [])


def unwritable() -> Path:
    """A folder no file can be created in, whoever runs the test (root included)."""
    folder = Path("/sys")
    if not folder.is_dir():
        pytest.skip("needs Linux's /sys: a folder no file can be created in, even by root")
    try:
        (folder / "triform-probe").touch()
    except OSError:
        return folder
    (folder / "triform-probe").unlink()
    pytest.skip("/sys accepts new files here: no unwritable folder to test with")


CASES = ["own-input", "existing-file", "other-kind", "file-as-parent", "unwritable"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_output_where_it_must_not_go_is_refused(
    world: dict[str, Path], name: str, case: str, capsys: pytest.CaptureFixture
) -> None:
    kind = COMMANDS[name][1]
    overwrite = case in ("own-input", "other-kind")  # only the rule itself may refuse it
    if case == "own-input":
        out = resolve(world, OWN_INPUT[name])
    elif case == "existing-file":
        out = world["existing"]
    elif case == "other-kind":
        out = resolve(world, OTHER_KIND_OF.get(name, OTHER_KIND[kind]))
    elif case == "file-as-parent":
        out = world["existing"] / "out.npy"
    else:
        out = unwritable() / f"triform-{name}-out.npy"
    before = state(world["root"])
    capsys.readouterr()
    assert main(argv(world, name, out, overwrite)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("triform: error: "), err
    assert state(world["root"]) == before
    assert not (Path("/sys") / f"triform-{name}-out.npy").exists()


def test_an_existing_output_is_replaced_only_with_overwrite(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("earlier\n")
    args = argv(world, "predict", out, overwrite=False) + ["--no-progress"]
    assert main(args) == 2
    assert out.read_text() == "earlier\n"
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["prediction"] in ("pos", "neg")
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]
