"""Perplexity: the sliding window against the ``transformers`` guide on a converted GPT-2,
masked-LM pseudo-perplexity against one masked copy per forward, seq2seq pairs, and
``triform evaluate perplexity`` end to end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from triform import build_model, presets
from triform.cli import main
from triform.errors import TriformError
from triform.inference import perplexity
from triform.inference.perplexity import (
    decoder_perplexity,
    pseudo_perplexity,
    seq2seq_perplexity,
    sliding_windows,
)
from triform.runs import save_weights
from triform.tokenizers import SpecialTokens, save_tokenizer, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n\n"
    "\tThe slings and arrows of outrageous fortune,  \n"
    "Or to take arms against a sea of troubles\n"
)


@pytest.fixture(scope="module")
def char_gpt2():
    return train_tokenizer([TEXT] * 4, kind="char", vocab_size=60, family="gpt2")


@pytest.fixture(scope="module")
def char_bert():
    return train_tokenizer([TEXT] * 4, kind="char", vocab_size=60, family="bert")


def test_windows_score_every_token_once():
    for n, length, stride in [(10, 4, 2), (9, 4, 3), (3, 8, 4), (1, 4, 2), (10, 4, 4)]:
        windows = sliding_windows(n, length, stride)
        scored = [t for _, end, first in windows for t in range(first, end)]
        lost = {0} if stride < length else set(range(0, n, length))  # no context in window
        assert scored == [t for t in range(n) if t not in lost]
        assert all(end - begin <= length and begin < first for begin, end, first in windows)
    with pytest.raises(TriformError, match="stride"):
        sliding_windows(10, 4, 5)


def _guide(hf_model, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The loop of the transformers perplexity guide, with every scored token counted
    (the guide subtracts one label per window for the shift even where none was lost)."""
    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf_model(input_ids, labels=target_ids).loss
        counted = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * counted
        n_tokens += counted
        prev_end = end
        if end == seq_len:
            break
    return nll_sum, n_tokens


@pytest.mark.parametrize(("max_length", "stride"), [(32, 16), (32, 32), (32, 7)])
def test_sliding_window_equals_the_transformers_guide(char_gpt2, max_length, stride):
    transformers = pytest.importorskip("transformers")
    from triform.interop.hf import from_hf

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=char_gpt2.get_vocab_size()
    )
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    model = from_hf(hf_model).eval()
    ids = char_gpt2.encode(TEXT, add_special_tokens=False).ids
    assert len(ids) > 4 * max_length
    nll, tokens = _guide(hf_model, torch.tensor([ids]), max_length, stride)
    result = decoder_perplexity(
        model, char_gpt2, [TEXT], max_length=max_length, stride=stride, batch_size=3
    )
    assert result.tokens == tokens
    assert tokens == len(ids) - (1 if stride < max_length else math.ceil(len(ids) / max_length))
    assert abs(result.mean_nll - nll / tokens) < 1e-4
    assert abs(result.perplexity - math.exp(nll / tokens)) < 1e-4 * result.perplexity
    assert result.bits_per_char == pytest.approx(result.nll / math.log(2) / len(TEXT))


def _tiny(preset: str, tokenizer, **overrides):
    torch.manual_seed(0)
    special = SpecialTokens.from_tokenizer(tokenizer)
    config = presets.get(
        preset,
        vocab_size=tokenizer.get_vocab_size(),
        pad_token_id=special.pad_id if special.pad_id is not None else 0,
        **overrides,
    )
    return build_model(config).eval()


def test_pseudo_perplexity_masks_each_token_once_in_batches(char_bert):
    model = _tiny("bert-tiny", char_bert, max_positions=24)
    texts = [TEXT[:50], TEXT[60:90]]
    result = pseudo_perplexity(model, char_bert, texts, max_length=20, batch_size=16)
    n_tokens = sum(len(char_bert.encode(t, add_special_tokens=False).ids) for t in texts)
    assert result.tokens == n_tokens and result.bits_per_byte is None
    # the same, one masked copy per forward, by hand
    special = SpecialTokens.from_tokenizer(char_bert)
    total = 0.0
    for text in texts:
        ids = char_bert.encode(text, add_special_tokens=False).ids
        for begin in range(0, len(ids), 18):
            row = [special.cls_id, *ids[begin : begin + 18], special.sep_id]
            for j in range(1, len(row) - 1):
                masked = torch.tensor([row])
                masked[0, j] = special.mask_id
                with torch.no_grad():
                    logits = model(masked, torch.ones_like(masked), torch.zeros_like(masked)).logits
                total += float(F.cross_entropy(logits[0, j], torch.tensor(row[j])))
    assert result.nll == pytest.approx(total, rel=1e-5)
    again = pseudo_perplexity(model, char_bert, texts, max_length=20, batch_size=5)
    assert again.nll == pytest.approx(result.nll, rel=1e-5)
    with pytest.raises(TriformError, match="masked-LM head"):
        pseudo_perplexity(_tiny("bert-tiny", char_bert, encoder_head="rtd"), char_bert, texts)


def test_seq2seq_perplexity_scores_the_targets(char_gpt2):
    tok = train_tokenizer([TEXT] * 4, kind="char", vocab_size=60, family="bart")
    model = _tiny("bart-tiny", tok)
    pairs = [("To be", "or not to be"), ("the question", "Whether"), ("a", "sea of troubles")]
    one = seq2seq_perplexity(model, tok, pairs, batch_size=1)
    many = seq2seq_perplexity(model, tok, pairs, batch_size=3)  # padding changes nothing
    assert one.tokens == many.tokens == sum(len(tok.encode(t).ids) for _, t in pairs)
    assert many.nll == pytest.approx(one.nll, rel=1e-5)
    assert many.perplexity > 1 and many.bits_per_byte is None


def test_a_share_of_the_windows_is_spread_evenly(char_gpt2, char_bert):
    """``windows``: that many windows spread evenly across the text, by the rule of a run's
    validation loss; each scores what it scores when every window is scored."""
    from triform.data.readers import evaluation_samples

    model = _tiny("gpt2-tiny", char_gpt2, max_positions=32)
    every = decoder_perplexity(model, char_gpt2, [TEXT], max_length=16, stride=16)
    assert every.whole and every.windows == every.total_windows == math.ceil(len(TEXT) / 16)
    some = decoder_perplexity(model, char_gpt2, [TEXT], max_length=16, stride=16, windows=3)
    assert (some.windows, some.total_windows) == (3, every.total_windows) and not some.whole
    assert some.bits_per_byte is None and some.to_dict()["windows"] == 3  # not the whole text
    chosen = evaluation_samples(every.total_windows, 3).tolist()
    by_hand = [decoder_perplexity(model, char_gpt2, [TEXT[16 * i : 16 * i + 16]]) for i in chosen]
    assert some.tokens == sum(r.tokens for r in by_hand) == 3 * 15
    assert some.nll == pytest.approx(sum(r.nll for r in by_hand), rel=1e-5)
    bert = _tiny("bert-tiny", char_bert, max_positions=24)
    some = pseudo_perplexity(bert, char_bert, [TEXT], max_length=20, windows=2)
    assert (some.windows, some.tokens) == (2, 2 * 18) and some.total_windows > 2
    tok = train_tokenizer([TEXT] * 4, kind="char", vocab_size=60, family="bart")
    pairs = [("To be", "or not to be"), ("the question", "Whether"), ("a", "sea of troubles")]
    one = seq2seq_perplexity(_tiny("bart-tiny", tok), tok, pairs, windows=1)
    assert (one.windows, one.total_windows, one.tokens) == (1, 3, len(tok.encode("Whether").ids))
    with pytest.raises(TriformError, match="windows"):
        decoder_perplexity(model, char_gpt2, [TEXT], windows=0)


def _model_folder(tmp_path: Path, preset: str, tokenizer, **overrides) -> Path:
    """A `triform convert`-style folder: model.json, model.safetensors, tokenizer.json."""
    model = _tiny(preset, tokenizer, **overrides)
    folder = tmp_path / preset
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(model.config.to_dict()))
    save_weights(model, folder / "model.safetensors")
    save_tokenizer(tokenizer, folder / "tokenizer.json")
    return folder


def test_command(tmp_path, capsys, char_gpt2, char_bert):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    gpt = _model_folder(tmp_path, "gpt2-tiny", char_gpt2, max_positions=32)
    assert main(["evaluate", "perplexity", str(gpt), str(text), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "sliding-window" and (out["max_length"], out["stride"]) == (32, 16)
    assert out["tokens"] == len(TEXT) - 1 and out["chars"] == len(TEXT)
    assert out["perplexity"] == pytest.approx(math.exp(out["nll"] / out["tokens"]))
    assert main(["evaluate", "perplexity", str(gpt), str(text), "--stride", "8"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "bits per byte" in printed and "stride 8" in printed
    assert main(["evaluate", "perplexity", str(gpt), str(text), "--windows", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 of 10 windows, spread evenly across the text" in printed
    assert "bits per byte" not in printed  # a share of the text has no bits per byte of it

    bert = _model_folder(tmp_path, "bert-tiny", char_bert, max_positions=32)
    assert main(["evaluate", "perplexity", str(bert), str(text), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "pseudo-perplexity" and out["tokens"] == len(TEXT)

    tok = train_tokenizer([TEXT] * 4, kind="char", vocab_size=60, family="bart")
    bart = _model_folder(tmp_path, "bart-tiny", tok)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "To be", "target": "or not"}\n\n{"source": "a", "target": "b"}\n')
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("To be\tor not\na\tb\n")
    assert main(["evaluate", "perplexity", str(bart), str(pairs), "--json"]) == 0
    from_jsonl = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "perplexity", str(bart), str(tsv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(from_jsonl["nll"])

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    for argv, message in [
        ([str(gpt), str(latin1)], "latin1.txt: not UTF-8 text"),
        ([str(gpt), str(text), "--stride", "0"], "stride"),
        ([str(gpt), str(text), "--max-length", "64"], "max_length"),
        ([str(gpt), str(tmp_path / "missing.txt")], "not found"),
        ([str(bert), str(text), "--stride", "4"], "stride is for decoders"),
        ([str(bart), str(text)], "source<TAB>target"),
    ]:
        assert main(["evaluate", "perplexity", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_python_api_reads_files(tmp_path, char_gpt2):
    path = tmp_path / "a.txt"
    path.write_text(TEXT, encoding="utf-8")
    model = _tiny("gpt2-tiny", char_gpt2, max_positions=32)
    result = perplexity(model, char_gpt2, [path, os.fspath(path)], max_length=16, progress=True)
    assert result.texts == 2 and result.tokens == 2 * (len(TEXT) - 1)
    assert result.files == [str(path), str(path)]
