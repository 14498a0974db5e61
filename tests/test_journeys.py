"""Every run usable by every command, for every family, through the command line as a user
would go: ``pretrain`` -> ``evaluate perplexity`` -> ``finetune`` (classification; text-to-text
for T5 and BART) -> ``predict`` -> ``convert --to hf`` -> transformers gives the same
predictions from the exported folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from test_finetune import keyword_rows, write_jsonl  # noqa: E402
from triform.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
TINY = [
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.ffn_size=64",
    "model.dropout=0.0",
    "train.batch_size=4",
    "train.steps=2",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.checkpoint_every=2",
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_tokens=0",
    "train.threads=1",
    "data.seq_len=32",
    "data.val_fraction=0.2",
    "data.workers=1",
    "tokenizer.vocab_size=400",
]
# family -> (pretraining config, extra overrides, what to fine-tune, perplexity options)
JOURNEYS = {
    "bert": ("bert-mlm-nsp", [], "classification", []),
    "roberta": ("roberta-mlm", [], "classification", []),
    "albert": ("albert-mlm-sop", ["model.embedding_size=16"], "classification", []),
    "electra": (
        "electra-rtd",
        ["model.embedding_size=32", "objective.generator_width=0.5"],
        "classification",
        ["--part", "generator"],  # pseudo-perplexity needs the masked-LM part
    ),
    "gpt2": ("gpt-bpe-shakespeare", ["model.max_positions=64"], "classification", []),
    "t5": ("t5-span-corruption", ["model.head_dim=16"], "text-to-text", []),
    "bart": ("bart-denoising", ["model.max_positions=64"], "text-to-text", []),
}


@pytest.fixture(scope="module")
def corpus(doc_corpus: Path) -> Path:
    return doc_corpus


def _set(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _task_files(folder: Path, kind: str) -> tuple[Path, Path]:
    """Train and test files of a tiny task: keyword detection, or copying two words of
    four for text-to-text."""
    rows = keyword_rows(40, 0)
    if kind == "text-to-text":
        rows = [{"source": r["text"], "target": " ".join(r["text"].split()[:2])} for r in rows]
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    write_jsonl(train, rows[:32])
    write_jsonl(test, rows[32:])
    return train, test


@pytest.mark.parametrize("family", list(JOURNEYS))
def test_pretrain_evaluate_finetune_predict_convert(
    family: str, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config, extra, kind, ppl_options = JOURNEYS[family]
    run = tmp_path / "pretrained"
    paths = [f"data.corpus={json.dumps(str(corpus))}", f"train.out_dir={json.dumps(str(run))}"]
    args = ["pretrain", str(ROOT / "configs" / f"{config}.toml")]
    assert main([*args, *_set(*TINY, *extra, *paths)]) == 0

    # evaluate perplexity on held-out text (pairs for encoder-decoders)
    heldout = tmp_path / ("heldout.tsv" if kind == "text-to-text" else "heldout.txt")
    if kind == "text-to-text":
        heldout.write_text("a river of stone\tthe river\ngreen music\tgreen\n")
    else:
        heldout.write_text("Some held-out text about rivers, stones and music.\n")
    capsys.readouterr()
    assert main(["evaluate", "perplexity", str(run), str(heldout), "--json", *ppl_options]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] > 0 and report["perplexity"] > 1.0

    # fine-tune from the run folder, then predict its test file
    train, test = _task_files(tmp_path, kind)
    task = {"kind": kind, "train": str(train), "max_length": 24}
    if kind == "text-to-text":
        task["generate_max_tokens"] = 4
    toml = tmp_path / "finetune.toml"
    finetuned = tmp_path / "finetuned"
    lines = ["[model]", f"source = {json.dumps(str(run))}", "[task]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in task.items()]
    lines += ["[train]", "steps = 4", "batch_size = 8", "lr = 1e-3", "progress = false"]
    lines += ["tensorboard = false", "threads = 1", f"out_dir = {json.dumps(str(finetuned))}"]
    toml.write_text("\n".join(lines) + "\n")
    assert main(["finetune", str(toml)]) == 0
    predictions = tmp_path / "predictions.jsonl"
    args = ["predict", str(finetuned), "--input", str(test), "--out", str(predictions)]
    assert main([*args, "--no-progress"]) == 0
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 8

    # export to transformers: the same predictions from the exported folder
    exported = tmp_path / "hf"
    assert main(["convert", str(finetuned), str(exported), "--to", "hf"]) == 0
    rows = [json.loads(line) for line in test.read_text().splitlines()]
    if kind == "classification":
        classify = transformers.pipeline("text-classification", str(exported), device="cpu")
        # every label's score; truncated to task.max_length as triform's predict does
        outputs = classify([row["text"] for row in rows], top_k=None, truncation=True)
        for ours, theirs in zip(records, outputs, strict=True):
            scores = {s["label"]: s["score"] for s in theirs}
            assert scores == pytest.approx(ours["probabilities"], abs=1e-5)
            assert theirs[0]["label"] == ours["prediction"] or ours["score"] < 0.5 + 1e-5
    else:
        config_json = json.loads((exported / "config.json").read_text())
        tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(exported).eval()
        sources = [config_json.get("prefix", "") + row["source"] for row in rows]
        encoded = tokenizer(sources, padding=True, return_tensors="pt")
        generated = model.generate(**encoded)  # the exported generation_config: greedy
        theirs = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        assert theirs == [r["prediction"] for r in records]
