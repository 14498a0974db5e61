"""Parameter-efficient fine-tuning: ``train.freeze``, ``train.freeze_layers`` and ``[lora]``.

LoRA layers start as the base and merge to the same outputs (every form: fused QKV slices,
cross-attention, gated feed-forward); a LoRA run trains only its adapters and head (optimizer
state, gradients), saves only them with the base's hash, and its folder is read by
``predict``, ``features``, ``load_finetuned`` and ``convert --to hf`` (the ``transformers``
pipeline answers as ``triform predict``), refusing a base that changed; a resumed LoRA run is
exact, and one runs on two processes. Frozen weights stay bit for bit; bad values are
one-line errors before step 1. Mostly through the CLI, on tiny configs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from launch import launch
from test_finetune import KEYWORD, WORDS, family_tokenizers, keyword_rows, write_jsonl
from triform import presets
from triform.cli import main
from triform.finetune import load_finetune_config, load_finetuned
from triform.finetune.data import Row
from triform.finetune.trainer import FinetuneRun
from triform.inference.features import extract_features
from triform.loading import ADAPTERS, read_adapted_body
from triform.models import build_model
from triform.nn.lora import LoRAConfig, LoRALinear, apply_lora, lora_layers, merge_lora
from triform.runs import latest_checkpoint
from triform.runtime.packed import packed_linears
from triform.tokenizers import fit_to_tokenizer, load_tokenizer
from triform.train.metrics import read_metrics
from triform.train.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"hidden_size": 32, "num_heads": 2, "ffn_size": 64, "num_layers": 2, "max_positions": 64,
        "dropout": 0.0, "attention_dropout": 0.0}  # fmt: skip
CONFIG = """
[model]
source = "{source}"
{tokenizer}
[task]
kind = "{kind}"
train = "{train}"
validation = "{validation}"
max_length = 16
[train]
epochs = 2
batch_size = 8
eval_every = 3
log_every = 1
progress = false
tensorboard = false
threads = 1
precision = "fp32"
[optim]
lr = 3e-3
"""
LORA = ["lora.r=4", "lora.alpha=8", 'lora.targets=["q", "v"]', "lora.dropout=0.0"]
TEXTS = [f"apple {KEYWORD} river", "stone cloud green music", f"{KEYWORD} {KEYWORD}", "paper"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, save_model_folder) -> Path:
    """Data, tokenizers, a saved tiny BERT base (a model folder) and configs fine-tuning it
    (``bert.toml``) or a GPT-2 preset (``gpt.toml``, a kind that grows the vocabulary)."""
    folder = tmp_path_factory.mktemp("lora")
    toks = family_tokenizers(folder)
    write_jsonl(folder / "train.jsonl", keyword_rows(32, 0))
    write_jsonl(folder / "dev.jsonl", keyword_rows(12, 1))
    tokenizer = load_tokenizer(toks["bert"])
    torch.manual_seed(0)
    base = build_model(fit_to_tokenizer(presets.get("bert-tiny", **TINY), tokenizer))
    save_model_folder(folder / "base", base, tokenizer)
    data = {"train": folder / "train.jsonl", "validation": folder / "dev.jsonl"}
    (folder / "bert.toml").write_text(
        CONFIG.format(source=folder / "base", tokenizer="", kind="classification", **data)
    )
    gpt = CONFIG.format(
        source="preset:gpt2-tiny", tokenizer=f'tokenizer = "{toks["gpt2"]}"',
        kind="gpt-classification", **data,
    )  # fmt: skip
    overrides = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items())
    (folder / "gpt.toml").write_text(gpt + f"[model.overrides]\n{overrides}\n")
    return folder


def _args(config: Path, out: Path, *extra: str) -> list[str]:
    items = [f"train.out_dir={json.dumps(str(out))}", *extra]
    return ["finetune", str(config), *[a for item in items for a in ("--set", item)]]


def _run(config: Path, out: Path, *extra: str) -> FinetuneRun:
    """The run a config describes, set up as ``triform finetune`` sets it up (no training)."""
    torch.manual_seed(0)
    items = [f"train.out_dir={json.dumps(str(out))}", *extra]
    return FinetuneRun(load_finetune_config(config, items), out)


def _logits(model, task, texts: list[str]) -> torch.Tensor:
    batch = task.collate(task.encode([Row({"text": t}, "t") for t in texts], training=False))
    model.eval()
    with torch.no_grad():
        return torch.stack(task.outputs(model, batch))


# -- the layer ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["bert-tiny", "gpt2-tiny", "t5-tiny"])
def test_lora_starts_as_the_base_and_merges_to_its_own_outputs(preset: str) -> None:
    torch.manual_seed(0)
    model = build_model(presets.get(preset, **TINY, vocab_size=90)).eval()
    ids = torch.randint(4, 90, (2, 9))
    mask = torch.ones_like(ids)
    extra = {"decoder_input_ids": ids} if preset.startswith("t5") else {}

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return model(ids, mask, **extra).logits

    base = logits()
    names = apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.1, targets=["q", "v", "ffn"]))
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(logits(), base)  # B = 0: the base model exactly, dropout or not
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n}.lora_{ab}" for n in names for ab in "ab"
    }
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_b, std=0.2)  # a trained update
    unmerged = logits()
    assert not torch.allclose(unmerged, base, atol=1e-3)
    with packed_linears(model):  # packed inference leaves unmerged LoRA layers alone
        torch.testing.assert_close(logits(), unmerged, atol=1e-6, rtol=0)
    assert merge_lora(model) == len(names)
    assert not lora_layers(model)
    torch.testing.assert_close(logits(), unmerged, atol=1e-6, rtol=0)


def test_fused_qkv_slices_get_their_own_updates() -> None:
    """q and v adapted, k not: the update lands in the q and v rows of the fused weight."""
    torch.manual_seed(0)
    model = build_model(presets.get("bert-tiny", **TINY, vocab_size=90))
    apply_lora(model.eval(), LoRAConfig(r=2, targets=["q", "v"]))
    layer = model.encoder.layers[0].self_attn.qkv
    assert layer.lora_a.shape == (2, 2, 32) and layer.lora_b.shape == (2, 32, 2)
    torch.nn.init.normal_(layer.lora_b)
    delta = layer.delta_weight()
    a, b = layer.lora_a, layer.lora_b
    torch.testing.assert_close(delta[:32], b[0] @ a[0] * layer.scale)
    assert torch.equal(delta[32:64], torch.zeros(32, 32))
    torch.testing.assert_close(delta[64:], b[1] @ a[1] * layer.scale)
    x = torch.randn(3, 32)
    with torch.no_grad():
        plain = x @ (layer.weight + delta).T + layer.bias
        torch.testing.assert_close(layer(x), plain, atol=1e-5, rtol=1e-6)


# -- a LoRA run ---------------------------------------------------------------------------
def test_only_adapters_and_head_train(folder: Path, tmp_path: Path) -> None:
    run = _run(folder / "bert.toml", tmp_path / "run", *LORA)
    plain = _run(folder / "bert.toml", tmp_path / "plain")
    torch.testing.assert_close(  # the LoRA model starts as the base with the same head
        _logits(run.model, run.task, TEXTS), _logits(plain.model, plain.task, TEXTS),
        atol=0, rtol=0,
    )  # fmt: skip
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable == {
        *(f"body.encoder.layers.{i}.self_attn.qkv.lora_{ab}" for i in (0, 1) for ab in "ab"),
        *(n for n, _ in run.model.head.named_parameters(prefix="head")),
    }
    optimizer = build_optimizer(run.model, run.config.optim, run.param_groups(run.model))
    in_optimizer = [p for g in optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in in_optimizer} == {
        id(p) for p in run.model.parameters() if p.requires_grad
    }
    run.model.train()
    batch = run.micro_batches(0)[0]
    loss, _ = run.loss(run.model, batch, {k: v for k, v in run.counts(batch).items()})
    loss.backward()
    for name, param in run.model.named_parameters():
        assert (param.grad is not None) == (name in trainable), name


def test_a_lora_run_saves_adapters_and_is_read_by_every_command(
    folder: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    test = f"task.test={json.dumps(str(folder / 'dev.jsonl'))}"  # predicted with best/
    assert main(_args(folder / "bert.toml", out, *LORA, test)) == 0
    assert "LoRA r=4 on q, v:" in capsys.readouterr().out  # the banner says what trains
    best = out / "best"
    assert not (best / "model.safetensors").exists()
    stored = load_file(best / ADAPTERS)
    assert {k for k in stored if k.startswith("body.")} == {
        f"body.encoder.layers.{i}.self_attn.qkv.lora_{ab}" for i in (0, 1) for ab in "ab"
    }
    assert {k for k in stored if not k.startswith("body.")} == {
        f"head.{k}" for k in load_finetuned(best).model.head.state_dict()
    }
    spec = json.loads((best / "adapters.json").read_text())
    assert spec["base"]["source"] == str(folder / "base") and len(spec["base"]["sha256"]) == 64
    # only the trainable tensors have optimizer state, and results.json counts them
    optimizer = torch.load(latest_checkpoint(out) / "optimizer.pt", weights_only=True)
    assert len(optimizer["state_dict"]["state"]) == len(stored)
    results = json.loads((out / "results.json").read_text())
    assert results["trainable_parameters"] == sum(v.numel() for v in stored.values())
    assert results["parameters"] > 10 * results["trainable_parameters"]

    # round trip: the folder loaded (merged) answers as the live, unmerged model did
    run = _run(folder / "bert.toml", tmp_path / "again", *LORA)
    run.adaptation.load_saved(run.model, best)
    assert lora_layers(run.model)
    ft = load_finetuned(out)
    assert not lora_layers(ft.model)
    torch.testing.assert_close(
        _logits(ft.model, ft.task, TEXTS), _logits(run.model, run.task, TEXTS), atol=1e-6, rtol=0
    )

    # predict, features (the merged body) through the CLI
    data = write_jsonl(tmp_path / "new.jsonl", [{"text": t} for t in TEXTS])
    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", str(out), "--input", data, "--out", str(predictions)]) == 0
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["prediction"] for r in lines] == ft.predict(TEXTS)
    dev = [json.loads(line)["text"] for line in (folder / "dev.jsonl").read_text().splitlines()]
    tested = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in tested] == ft.predict(dev)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    feats = tmp_path / "feats.safetensors"
    assert main(["features", str(best), "--input", str(texts), "--out", str(feats),
                 "--pooling", "mean"]) == 0  # fmt: skip
    body = read_adapted_body(best)  # what features read: the merged body
    assert body.state_dict().keys() == ft.model.body.state_dict().keys()
    assert all(torch.equal(v, ft.model.body.state_dict()[k]) for k, v in body.state_dict().items())
    expected = extract_features(ft.model.body, ft.tokenizer, TEXTS, pooling="mean")
    torch.testing.assert_close(
        load_file(feats)["features"], torch.as_tensor(expected), atol=1e-6, rtol=0
    )


def test_a_changed_base_is_a_one_line_error(folder: Path, tmp_path: Path, capsys) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for file in (folder / "base").iterdir():
        (base / file.name).write_bytes(file.read_bytes())
    config = tmp_path / "bert.toml"
    config.write_text((folder / "bert.toml").read_text().replace(str(folder / "base"), str(base)))
    out = tmp_path / "run"
    assert main(_args(config, out, *LORA, "train.epochs=1")) == 0
    weights = load_file(base / "model.safetensors")
    weights["pooler.dense.bias"] = weights["pooler.dense.bias"] + 1.0  # the base moved on
    save_file(weights, base / "model.safetensors")
    capsys.readouterr()
    data = write_jsonl(tmp_path / "new.jsonl", [{"text": t} for t in TEXTS])
    assert main(["predict", str(out), "--input", data]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapters were trained on" in err and "sha256" in err, err


def test_a_base_moved_with_its_run_is_found_and_a_lost_one_is_named(
    folder: Path, tmp_path: Path, capsys
) -> None:
    """Base and run moved together (another machine, a renamed project): the adapters find
    the base where it is relative to them; a base that is nowhere is a one-line error that
    says how to point at it."""
    project = tmp_path / "project"
    (project / "base").mkdir(parents=True)
    for file in (folder / "base").iterdir():
        (project / "base" / file.name).write_bytes(file.read_bytes())
    config = tmp_path / "bert.toml"
    config.write_text(
        (folder / "bert.toml").read_text().replace(str(folder / "base"), str(project / "base"))
    )
    assert main(_args(config, project / "run", *LORA, "train.epochs=1")) == 0
    data = write_jsonl(tmp_path / "new.jsonl", [{"text": t} for t in TEXTS])
    before = tmp_path / "before.jsonl"
    assert main(["predict", str(project / "run"), "--input", data, "--out", str(before)]) == 0
    moved = project.rename(tmp_path / "moved")
    after = tmp_path / "after.jsonl"
    assert main(["predict", str(moved / "run"), "--input", data, "--out", str(after)]) == 0
    assert after.read_text() == before.read_text()

    (moved / "base").rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["predict", str(moved / "run"), "--input", data]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'set "source" in' in err and "adapters.json" in err, err
    spec = moved / "run" / "best" / "adapters.json"
    edited = json.loads(spec.read_text())
    edited["base"]["source"] = str(tmp_path / "elsewhere")  # as the message says
    spec.write_text(json.dumps(edited))
    again = tmp_path / "again.jsonl"
    assert main(["predict", str(moved / "run"), "--input", data, "--out", str(again)]) == 0
    assert again.read_text() == before.read_text()


def test_a_grown_vocabulary_travels_with_the_adapters(folder: Path, tmp_path: Path) -> None:
    """gpt-classification adds three tokens to a preset GPT-2: their (frozen, random) rows
    are saved with the adapters, and the preset base is drawn again from the seed."""
    out = tmp_path / "run"
    assert main(_args(folder / "gpt.toml", out, *LORA, "train.epochs=1")) == 0
    stored = load_file(out / "best" / ADAPTERS)
    assert "body.embeddings.token.weight" in stored  # grown: the base has fewer rows
    assert not any(k.startswith("body.decoder.layers.0.ffn") for k in stored)
    run = _run(folder / "gpt.toml", tmp_path / "again", *LORA)
    run.adaptation.load_saved(run.model, out / "best")
    ft = load_finetuned(out)
    texts = [f"the {w}" for w in WORDS[:4]]
    torch.testing.assert_close(
        _logits(ft.model, ft.task, texts), _logits(run.model, run.task, texts), atol=1e-6, rtol=0
    )
    generate = [
        "generate",
        str(out / "best"),
        "--prompt",
        "the",
        "--greedy",
        "--max-new-tokens",
        "4",
    ]
    assert main(generate) == 0  # the one loader reads the grown, merged body


def test_a_resumed_lora_run_is_exact(folder: Path, tmp_path: Path) -> None:
    common = [*LORA, "train.checkpoint_every=2", "train.eval_every=100",
              'schedule.kind="constant"', "schedule.warmup_steps=0"]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(_args(folder / "bert.toml", whole, *common)) == 0
    assert main(_args(folder / "bert.toml", cut, *common, "train.steps=2")) == 0
    resume = [*_args(folder / "bert.toml", cut, *common), "--resume", str(cut)]
    assert main(resume) == 0
    one, two = load_file(whole / "final" / ADAPTERS), load_file(cut / "final" / ADAPTERS)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_convert_to_hf_merges_and_the_pipeline_answers_as_predict(
    folder: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "run"
    assert main(_args(folder / "bert.toml", out, *LORA, 'lora.targets=["q", "v", "o", "ffn"]')) == 0
    hf_dir = tmp_path / "hf"
    assert main(["convert", str(out), str(hf_dir), "--to", "hf"]) == 0
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    data = write_jsonl(tmp_path / "new.jsonl", [{"text": t} for t in TEXTS])
    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", str(out), "--input", data, "--out", str(predictions)]) == 0
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    classify = transformers.pipeline("text-classification", model=str(hf_dir), device="cpu")
    answers = classify(TEXTS)
    assert [a["label"] for a in answers] == [r["prediction"] for r in lines]
    assert [a["score"] for a in answers] == pytest.approx([r["score"] for r in lines], abs=1e-5)


needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs the gloo backend"
)


@needs_gloo
@pytest.mark.parametrize("what", [LORA, ['train.freeze="body"'], ["train.freeze_layers=1"]])
def test_fine_tuning_part_runs_on_two_processes_like_one(
    folder: Path, tmp_path: Path, what: list[str]
) -> None:
    config = folder / "bert.toml"
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(config, one, *what)) == 0
    ranks = launch(_args(config, two, *what), tmp_path / "logs")  # DDP
    assert [r["rc"] for r in ranks] == [0, 0], ranks
    for split in ("train", "val"):
        a = {r["step"]: r["loss"] for r in read_metrics(two, split=split)}
        b = {r["step"]: r["loss"] for r in read_metrics(one, split=split)}
        assert a.keys() == b.keys()
        for step, loss in b.items():
            assert a[step] == pytest.approx(loss, rel=1e-4), (split, step)
    name = ADAPTERS if what is LORA else "model.safetensors"
    assert load_file(two / "best" / name).keys() == load_file(one / "best" / name).keys()


# -- freezing -----------------------------------------------------------------------------
@pytest.mark.parametrize("freeze", ['train.freeze="body"', "train.freeze_layers=1"])
def test_frozen_weights_stay_bit_identical(folder: Path, tmp_path: Path, freeze: str) -> None:
    out = tmp_path / "run"
    assert main(_args(folder / "bert.toml", out, freeze, "train.epochs=1")) == 0
    base = load_file(folder / "base" / "model.safetensors")
    tuned = load_file(out / "final" / "model.safetensors")
    optimizer = torch.load(latest_checkpoint(out) / "optimizer.pt", weights_only=True)
    trained = set(optimizer["state_dict"]["state"])
    if freeze.endswith('"body"'):
        frozen = set(base)
    else:
        frozen = {k for k in base if k.startswith(("embeddings.", "encoder.layers.0."))}
        moved = [k for k in base if k.startswith("encoder.layers.1.") and "weight" in k]
        assert moved and all(not torch.equal(base[k], tuned[f"body.{k}"]) for k in moved)
    for key in frozen:
        assert torch.equal(base[key], tuned[f"body.{key}"]), key
        assert f"body.{key}" not in trained  # no optimizer state for a frozen parameter
    assert any(k.startswith("head.") for k in trained)


# -- bad values ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra,message",
    [
        (["lora.r=0"], "lora.r must be a positive integer"),
        (['lora.targets=["q", "x"]'], "unknown target 'x'"),
        (["lora.alpha=0"], "lora.alpha must be positive"),
        (["train.freeze_layers=3"], "train.freeze_layers = 3, but the body has a stack of 2"),
        (['train.freeze="head"'], "train.freeze must be one of"),
        ([*LORA, 'train.freeze="body"'], "[lora] freezes the whole body already"),
        (["optim.body_lr=0"], 'train.freeze = "body"'),
    ],
)
def test_bad_values_are_one_line_errors_before_step_one(
    folder: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main(_args(folder / "bert.toml", out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_bench_lora_tiny() -> None:
    """benchmarks/bench_lora.py in its tiny mode: each variant in its own process."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_lora

    full, frozen, lora = bench_lora.main(["--tiny"])
    assert full.trainable == full.total > lora.trainable > frozen.trainable > 0
    assert full.optimizer_bytes > lora.optimizer_bytes > frozen.optimizer_bytes > 0
    assert all(r.peak_mb > 0 and r.step_seconds > 0 for r in (full, frozen, lora))
