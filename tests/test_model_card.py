"""`triform convert RUN OUT --to hf` writes a model card (README.md): a YAML header model hubs
read, and the facts the run folder records — model, base checkpoint, data, metrics, the
commands that made it."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import tomllib

from triform.cli import main
from triform.finetune.config import build_finetune_config
from triform.interop.hf.card import hub_id, pipeline_tag
from triform.runs import stored_shapes
from triform.train.metrics import read_commands, read_metrics
from triform.train.run_config import build_run_config

yaml = pytest.importorskip("yaml", reason="the header is checked with PyYAML")

PRETRAIN = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.ffn_size=64",
    "train.steps=4",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.progress=false",
    "train.tensorboard=false",
    "data.seq_len=32",
    "data.workers=1",
    "data.val_fraction=0.2",
    "tokenizer.vocab_size=200",
]
ROOT = Path(__file__).resolve().parents[1]


def _card(folder: Path) -> tuple[dict, str]:
    """The parsed YAML header and the Markdown body of ``folder/README.md``."""
    text = (folder / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.DOTALL)
    assert match, text[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def _toml_block(body: str) -> dict:
    """The resolved config the card shows, read back as TOML."""
    return tomllib.loads(re.search(r"```toml\n(.*?)```", body, re.DOTALL).group(1))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, doc_corpus: Path) -> Path:
    """A tiny BERT pretraining run, started as the `triform` command would be."""
    out = tmp_path_factory.mktemp("card") / "bert-run"
    args = ["pretrain", str(ROOT / "configs" / "bert-mlm-nsp.toml")]
    for item in [*PRETRAIN, f"data.corpus={json.dumps(str(doc_corpus))}", f"train.out_dir={out}"]:
        args += ["--set", item]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["/usr/local/bin/triform", *args])
        assert main(args) == 0
    return out


def test_a_pretrained_run_gets_a_card_with_its_facts(pretrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "bert-hf"
    assert main(["convert", str(pretrained), str(out), "--to", "hf"]) == 0
    header, body = _card(out)
    assert header["library_name"] == "triform"
    assert header["pipeline_tag"] == "fill-mask"  # BertForPreTraining
    assert {"triform", "bert", "mlm-nsp"} <= set(header["tags"])
    assert "base_model" not in header  # pretrained from scratch
    final = read_metrics(pretrained, split="val")[-1]
    (result,) = header["model-index"][0]["results"]
    reported = {m["type"]: m["value"] for m in result["metrics"]}
    assert reported["loss"] == pytest.approx(final["loss"])
    assert reported["perplexity"] == pytest.approx(final["perplexity"])
    assert set(header["metrics"]) == set(reported)
    parameters = sum(math.prod(s) for s in stored_shapes(out / "model.safetensors").values())
    assert f"| parameters (as exported) | {parameters:,} |" in body
    meta = json.loads((pretrained / "data" / "meta.json").read_text())
    assert f"{meta['splits']['train']['tokens']:,} tokens" in body
    assert "objective: `mlm-nsp`" in body and "4 steps of 4 sequences of 32 tokens" in body
    # the command as it was typed, and the resolved config that remakes the run
    (start,) = read_commands(pretrained)
    assert start["step"] == 0 and start["argv"][1] == "pretrain"
    assert "triform pretrain " + str(ROOT / "configs" / "bert-mlm-nsp.toml") in body
    run = build_run_config(_toml_block(body))
    assert run.train.steps == 4 and run.model.hidden_size == 32


def test_continued_pretraining_names_its_checkpoint(
    pretrained: Path, doc_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "more"
    args = ["pretrain", str(ROOT / "configs" / "bert-mlm-nsp.toml")]
    items = [*PRETRAIN, f"data.corpus={json.dumps(str(doc_corpus))}", f"train.out_dir={out}"]
    for item in [*items, f"model.init={json.dumps(str(pretrained))}"]:
        args += ["--set", item]
    assert main(args) == 0
    assert main(["convert", str(out), str(tmp_path / "more-hf"), "--to", "hf"]) == 0
    header, body = _card(tmp_path / "more-hf")
    assert "base_model" not in header  # a local triform run has no hub id
    assert "further pretrained" in body and "## Base checkpoint" in body
    assert f"`{pretrained.name}`, a triform run" in body and "(`model.init`)" in body
    init = json.loads((out / "run.json").read_text())["init"]
    assert init["weights_sha256"] in body
    assert build_run_config(_toml_block(body)).init.init == str(pretrained)


def test_a_finetuned_run_gets_a_card_naming_its_base(pretrained: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    words = ["apple", "river", "stone", "cloud", "green", "music"]
    for name, n in (("train", 24), ("dev", 8)):
        rows = []
        for _ in range(n):
            picked = rng.choices(words, k=4)
            label = rng.choice(["pos", "neg"])
            if label == "pos":
                picked[0] = "zebra"
            rows.append({"text": " ".join(picked), "label": label})
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "classify.toml"
    config.write_text(
        f"[model]\nsource = {json.dumps(str(pretrained))}\n"
        '[task]\nkind = "classification"\ntrain = "train.jsonl"\nvalidation = "dev.jsonl"\n'
        f"[train]\nout_dir = {json.dumps(str(tmp_path / 'ft'))}\nepochs = 2\nbatch_size = 8\n"
        "progress = false\ntensorboard = false\nthreads = 1\n"
    )
    assert main(["finetune", str(config)]) == 0
    out = tmp_path / "ft-hf"
    assert main(["convert", str(tmp_path / "ft"), str(out), "--to", "hf"]) == 0
    header, body = _card(out)
    assert header["pipeline_tag"] == "text-classification"
    assert {"triform", "bert", "classification"} <= set(header["tags"])
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    best = json.loads((tmp_path / "ft" / "best" / "finetune.json").read_text())
    validation = header["model-index"][0]["results"][0]
    assert validation["dataset"]["name"] == "dev.jsonl"
    reported = {m["type"]: m["value"] for m in validation["metrics"]}
    assert reported["accuracy"] == pytest.approx(best["metrics"]["accuracy"])
    assert "accuracy" in header["metrics"]
    # the base checkpoint and what it was pretrained on; the fine-tuning data with its rows
    assert f"`{pretrained.name}`, a triform pretraining run" in body
    assert "objective: `mlm-nsp`" in body
    assert "train: `train.jsonl` (24 rows)" in body and "validation: `dev.jsonl` (8 rows)" in body
    assert "labels: `neg`, `pos`" in body
    assert f"step {best['step']} of {results['steps']}" in body
    remade = build_finetune_config(_toml_block(body))
    assert remade.task.kind == "classification" and remade.train.epochs == 2


def test_pipeline_tags_and_hub_ids(tmp_path: Path) -> None:
    assert pipeline_tag("GPT2LMHeadModel") == "text-generation"
    assert pipeline_tag("T5ForConditionalGeneration") == "text2text-generation"
    assert pipeline_tag("RobertaForTokenClassification") == "token-classification"
    assert pipeline_tag("BertModel") == "feature-extraction"
    assert pipeline_tag("ElectraForPreTraining") is None
    cache = "/home/me/.cache/huggingface/hub/models--google--electra-small/snapshots/abc"
    assert hub_id(cache) == "google/electra-small"
    assert hub_id("preset:bert-tiny") is None
    assert hub_id(str(tmp_path / "runs" / "bert")) is None  # not a checkpoint folder
    (tmp_path / "config.json").write_text('{"_name_or_path": "sentence-transformers/mini"}')
    assert hub_id(str(tmp_path)) == "sentence-transformers/mini"
