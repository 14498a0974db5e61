"""Run folders: the one loader reads run, model and HuggingFace folders; an ELECTRA run loads
as its discriminator (or its generator) in every command; metadata is written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from triform import build_model, presets
from triform.cli import main
from triform.errors import TriformError
from triform.loading import load_model, read_model
from triform.runs import PARTS_JSON, latest_checkpoint, save_weights, write_json
from triform.tokenizers import save_tokenizer, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.ffn_size=64",
    "model.embedding_size=32",
    "train.batch_size=4",
    "train.steps=2",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.checkpoint_every=2",
    "train.progress=false",
    "train.tensorboard=false",
    "data.seq_len=32",
    "data.val_fraction=0.2",
    "data.workers=1",
    "tokenizer.vocab_size=300",
    "objective.generator_width=0.5",
]


@pytest.fixture(scope="module")
def electra_run(tmp_path_factory: pytest.TempPathFactory, doc_corpus: Path) -> Path:
    corpus = doc_corpus
    out = tmp_path_factory.mktemp("electra") / "run"
    args = ["pretrain", str(Path(__file__).parents[1] / "configs" / "electra-rtd.toml")]
    for item in [
        *TINY,
        f"data.corpus={json.dumps(str(corpus))}",
        f"train.out_dir={json.dumps(str(out))}",
    ]:
        args += ["--set", item]
    assert main(args) == 0
    return out


def test_electra_run_loads_as_discriminator_or_generator(electra_run: Path) -> None:
    parts = json.loads((electra_run / PARTS_JSON).read_text())
    assert list(parts) == ["discriminator", "generator"]
    stored = load_file(latest_checkpoint(electra_run) / "model.safetensors")

    discriminator, tokenizer = load_model(electra_run)
    assert discriminator.config.encoder_head == "rtd"
    for key, value in discriminator.state_dict().items():
        name = key if f"discriminator.{key}" not in stored else f"discriminator.{key}"
        assert torch.equal(value, stored[name]), key

    generator = read_model(electra_run, part="generator")
    assert generator.config.encoder_head == "mlm"
    assert generator.config.hidden_size == discriminator.config.hidden_size // 2
    # the shared embedding table is stored once, under the discriminator's name
    assert torch.equal(generator.embeddings.token.weight, discriminator.embeddings.token.weight)
    ids = torch.tensor([tokenizer.encode("def f(x): return x").ids])
    assert generator(ids).logits.shape[-1] == generator.config.vocab_size
    with pytest.raises(TriformError, match="no part 'critic'"):
        read_model(electra_run, part="critic")


def test_electra_run_feeds_features_and_finetune(
    electra_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("a first text\nand a second one\n")
    out = tmp_path / "features.npy"
    args = ["features", str(electra_run), "--input", str(texts), "--pooling", "mean"]
    assert main([*args, "--out", str(out)]) == 0
    assert np.load(out).shape == (2, 32)

    from triform.finetune.body import load_body
    from triform.finetune.config import ModelSection

    body, _ = load_body(ModelSection(source=str(electra_run)))
    assert body.config.encoder_head == "rtd"


def test_model_folders_and_errors(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(["some text to learn from"], kind="char", family="bert")
    config = presets.get("bert-tiny", vocab_size=tokenizer.get_vocab_size())
    model = build_model(config)
    folder = tmp_path / "model"
    folder.mkdir()
    write_json(folder / "model.json", config.to_dict())
    save_weights(model, folder / "model.safetensors")
    save_tokenizer(tokenizer, folder / "tokenizer.json")
    loaded, _ = load_model(folder)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with pytest.raises(TriformError, match="holds one model"):
        read_model(folder, part="generator")

    other = build_model(presets.get("gpt-tiny"))
    save_weights(other, folder / "model.safetensors")
    with pytest.raises(TriformError, match="does not fit this EncoderModel"):
        read_model(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(TriformError, match="malformed JSON"):
        read_model(folder)
    with pytest.raises(TriformError, match="neither a triform"):
        read_model(tmp_path)


def test_electra_run_converts_to_both_hf_classes(electra_run: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    for part, architecture in [
        (None, "ElectraForPreTraining"),
        ("generator", "ElectraForMaskedLM"),
    ]:
        out = tmp_path / (part or "discriminator")
        args = ["convert", str(electra_run), str(out), "--to", "hf"]
        assert main([*args, *(["--part", part] if part else [])]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["architectures"] == [architecture]
        ours = read_model(electra_run, part=part)
        theirs = getattr(transformers, architecture).from_pretrained(out).eval()
        ids = torch.tensor([[2, 40, 41, 42, 3]])
        with torch.no_grad():
            torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, rtol=1e-5, atol=1e-5)


def test_weights_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """safetensors creates 0600 files; a run's weights are as readable as its other files."""
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = save_weights(build_model(presets.get("bert-tiny")), tmp_path / "w.safetensors")
        write_json(tmp_path / "a.json", {})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    finally:
        os.umask(mask)


def test_spanbert_run_loads_as_its_encoder(doc_corpus: Path, tmp_path: Path) -> None:
    """A SpanBERT run stores its encoder under model.* beside the SBO head: every loader
    reads the encoder."""
    corpus = doc_corpus
    out = tmp_path / "spanbert"
    args = ["pretrain", str(Path(__file__).parents[1] / "configs" / "spanbert.toml")]
    tiny = [t for t in TINY if not t.startswith(("objective.", "model.embedding_size"))]
    paths = [f"data.corpus={json.dumps(str(corpus))}", f"train.out_dir={json.dumps(str(out))}"]
    for item in [*tiny, *paths]:
        args += ["--set", item]
    assert main(args) == 0
    encoder, _ = load_model(out)
    stored = load_file(latest_checkpoint(out) / "model.safetensors")
    assert any(key.startswith("sbo_head.") for key in stored)
    for key, value in encoder.state_dict().items():
        if f"model.{key}" in stored:  # (tied tensors are stored once)
            assert torch.equal(value, stored[f"model.{key}"]), key
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\n")
    assert (
        main(["features", str(out), "--input", str(texts), "--out", str(tmp_path / "f.npy")]) == 0
    )
