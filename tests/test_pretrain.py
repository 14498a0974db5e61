"""`triform pretrain` end to end: every shipped config trains a few steps (loss finite and
falling), resume is bit-identical, bad input is a one-line error, generate works."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from triform.cli import main
from triform.runs import latest_checkpoint
from triform.train.metrics import read_metrics
from triform.train.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
# Run configs; sweep configs (a [sweep] section, tests/test_scaling.py) are many runs.
CONFIGS = [c for c in sorted((ROOT / "configs").glob("*.toml")) if "[sweep]" not in c.read_text()]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"

TINY = [
    "model.hidden_size=64",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.ffn_size=128",
    "train.batch_size=8",
    "train.log_every=1",
    "train.eval_batches=2",
    "train.progress=false",
    "train.tensorboard=false",
    "data.seq_len=64",
    "data.val_fraction=0.2",
    "data.workers=1",
    "tokenizer.vocab_size=600",
    "schedule.warmup_steps=2",
    "optim.lr=2e-3",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A few hundred KB of real text: three plays, or stdlib documentation without them."""
    folder = tmp_path_factory.mktemp("corpus")
    if SHAKESPEARE.is_dir():
        texts = [(SHAKESPEARE / f"{n}.txt").read_text() for n in ("macbeth", "tempest", "lear")]
    else:
        from pydoc_data.topics import topics

        texts = ["\n\n".join(list(topics.values())[i::3]) for i in range(3)]
    for i, text in enumerate(texts):  # twelve documents, so that every split has several
        for j in range(4):
            (folder / f"doc{i}{j}.txt").write_text(text[j * 30_000 : (j + 1) * 30_000])
    return str(folder)


@pytest.fixture(scope="module")
def pairs(corpus: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Parallel text for the seq2seq config: each line paired with the next one."""
    lines = [x.strip() for x in (Path(corpus) / "doc00.txt").read_text().splitlines() if x.strip()]
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    path.write_text("".join(f"{a}\t{b}\n" for a, b in zip(lines[:-1], lines[1:], strict=True)))
    return str(path)


@pytest.fixture(scope="module")
def teacher(corpus: str, tmp_path_factory: pytest.TempPathFactory, save_model_folder) -> str:
    """For the distillation config: a random RoBERTa of TINY's width and twice its depth,
    with a byte-level BPE trained on the corpus, as a model folder."""
    import torch

    from triform import build_model, presets
    from triform.tokenizers import train_tokenizer

    texts = [p.read_text() for p in sorted(Path(corpus).iterdir())]
    tokenizer = train_tokenizer(texts, kind="byte-bpe", vocab_size=600, family="roberta")
    torch.manual_seed(0)
    config = presets.get(
        "roberta-base",
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        ffn_size=128,
        max_positions=130,
    )
    return save_model_folder(tmp_path_factory.mktemp("teacher"), build_model(config), tokenizer)


def _run(config: Path, out: Path, corpus: str, pairs: str, *extra: str, teacher: str = "") -> int:
    args = ["pretrain", str(config)]
    data = (
        [f"data.sources={json.dumps(pairs)}"]
        if "seq2seq" in config.name
        else [f"data.corpus={json.dumps(corpus)}"]
    )
    if "distill" in config.name:
        data.append(f"objective.teacher={json.dumps(teacher)}")
    for item in [*TINY, *data, f"train.out_dir={json.dumps(str(out))}", *extra]:
        args += ["--set", item]
    return main(args)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_trains_and_the_loss_falls(
    config: Path, corpus: str, pairs: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    extra = ["train.steps=16", "train.eval_every=16", "train.checkpoint_every=16"]
    if "t5" in config.name:
        extra.append("model.head_dim=16")
    teacher = request.getfixturevalue("teacher") if "distill" in config.name else ""
    assert _run(config, tmp_path, corpus, pairs, *extra, teacher=teacher) == 0
    losses = [r["loss"] for r in read_metrics(tmp_path, split="train")]
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    val = read_metrics(tmp_path, split="val")[-1]
    assert math.isfinite(val["loss"])
    assert latest_checkpoint(tmp_path) is not None
    assert (tmp_path / "loss_curve.png").is_file()


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="torch.compile on a CPU needs a C++ compiler"
)
def test_compiled_run_trains_and_says_what_compiling_cost(
    corpus: str, pairs: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``train.compile``: the model goes through torch.compile (no graph break in the
    forward), the loss is finite, and the first line after the first step says how long it
    took with compiling and where the compiled graphs are cached."""
    config = ROOT / "configs" / "gpt-bpe-shakespeare.toml"
    extra = [
        "train.steps=3",
        "train.eval_every=3",
        "train.checkpoint_every=3",
        "train.compile=true",
    ]
    assert _run(config, tmp_path, corpus, pairs, *extra) == 0
    out = capsys.readouterr()
    assert "compiling included (torch.compile; cache:" in out.out
    assert "Graph break" not in out.err
    losses = [r["loss"] for r in read_metrics(tmp_path, split="train")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_resume_is_bit_identical(corpus: str, pairs: str, tmp_path: Path) -> None:
    config = ROOT / "configs" / "gpt-char-shakespeare.toml"
    common = [
        "train.eval_every=3",
        "train.checkpoint_every=3",
        "schedule.total_steps=6",
        "model.dropout=0.1",
    ]
    assert _run(config, tmp_path / "one", corpus, pairs, "train.steps=6", *common) == 0
    assert _run(config, tmp_path / "two", corpus, pairs, "train.steps=3", *common) == 0
    resume_args = ["--resume", str(tmp_path / "two")]
    args = ["pretrain", str(config)]
    for item in [
        *TINY,
        f"data.corpus={json.dumps(corpus)}",
        "train.steps=6",
        *common,
        f"train.out_dir={json.dumps(str(tmp_path / 'two'))}",
    ]:
        args += ["--set", item]
    assert main(args + resume_args) == 0
    one = load_file(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    two = load_file(latest_checkpoint(tmp_path / "two") / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        assert (one[key] == two[key]).all(), key


def test_generate_from_a_pretrained_run(
    corpus: str, pairs: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = ROOT / "configs" / "gpt-char-shakespeare.toml"
    assert _run(config, tmp_path, corpus, pairs, "train.steps=4", "train.eval_every=4") == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path), "--prompt", "The", "--max-new-tokens", "12"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("The") and len(text.strip()) > 3
    assert main(["generate", str(tmp_path), "--greedy", "--max-new-tokens", "5"]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "missing.toml"], "config file not found"),
        (["pretrain", "--set", "train.stepz=3"], "unknown key train.stepz"),
        (["pretrain", "--set", "train.steps=-1"], "train.steps must be positive"),
        (["pretrain", "--set", "model.preset=gpt9"], "unknown preset"),
        (["pretrain", "--set", "objective.name=mlm"], "trains an encoder model"),
        (["pretrain", "--set", "bogus.x=1"], "unknown section [bogus]"),
        (["generate", "/nonexistent/run"], "model folder not found"),
    ],
)
def test_bad_input_is_a_one_line_error(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = (
        [*args, "--set", f"train.out_dir={json.dumps(str(tmp_path))}"]
        if args[0] == "pretrain"
        else args
    )
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_malformed_toml_and_empty_corpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\npreset = 'gpt2'")
    assert main(["pretrain", str(bad)]) == 2
    assert "malformed TOML" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    assert (
        main(
            [
                "pretrain",
                "--set",
                f"data.corpus={json.dumps(str(empty))}",
                "--set",
                f"train.out_dir={json.dumps(str(tmp_path / 'run'))}",
            ]
        )
        == 2
    )
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_config_paths_resolve_against_the_file() -> None:
    config = load_run_config(ROOT / "configs" / "bert-mlm-nsp.toml")
    assert Path(config.data.corpus[0]).is_absolute()
    assert config.model.family == "bert" and config.objective["name"] == "mlm-nsp"
