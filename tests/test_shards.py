"""Shards: tokenize once into memmaps with document and sentence indexes; no-op re-runs;
refusal of another tokenizer's shards; identical output with worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from triform.cli import main
from triform.data import Corpus
from triform.data.shards import (
    ShardSet,
    _SplitWriter,
    cuts_are_lossless,
    prepare_shards,
    token_dtype,
)
from triform.errors import ConfigError, TriformError
from triform.tokenizers import save_tokenizer, train_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def _documents(n_docs: int = 24, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        lines = []
        for _ in range(int(rng.integers(2, 12))):
            words = rng.choice(WORDS, size=int(rng.integers(1, 9)))
            lines.append(f"Doc {d}: " + " ".join(words) + ".")
        docs.append(lines)
    return docs


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(_documents()):
        (root / f"doc{i:02d}.txt").write_text("\n".join(doc) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def wordpiece(corpus_dir):
    return train_tokenizer(Corpus.from_paths(corpus_dir), kind="wordpiece", vocab_size=120)


@pytest.fixture(scope="module")
def byte_bpe(corpus_dir):
    return train_tokenizer(Corpus.from_paths(corpus_dir), kind="byte-bpe", vocab_size=300)


def test_layout_documents_and_sentences(tmp_path, corpus_dir, wordpiece):
    corpus = Corpus.from_paths(corpus_dir)
    info = prepare_shards(
        corpus, wordpiece, tmp_path / "s", val_fraction=0.2, workers=0, progress=False
    )
    assert not info.reused
    docs = list(corpus.documents())
    seen = 0
    for split in ("train", "val"):
        shards = ShardSet(tmp_path / "s", split, tokenizer=wordpiece)
        assert shards.tokens.dtype == np.uint16 and isinstance(shards.tokens, np.memmap)
        assert shards.doc_offsets[0] == 0 and shards.doc_offsets[-1] == shards.n_tokens
        assert shards.sent_offsets[-1] == shards.n_tokens
        assert set(shards.doc_offsets) <= set(shards.sent_offsets)
        assert np.array_equal(shards.sent_offsets[shards.doc_sent_offsets], shards.doc_offsets)
        counts = info.meta["splits"][split]
        assert (counts["tokens"], counts["documents"], counts["sentences"]) == (
            shards.n_tokens,
            shards.n_docs,
            shards.n_sents,
        )
        assert shards.n_docs > 0
        seen += shards.n_docs
        for d in range(shards.n_docs):
            ids = shards.document(d).tolist()
            text = shards.decode(ids)
            match = next(
                doc
                for doc in docs
                if wordpiece.decode(wordpiece.encode(doc, add_special_tokens=False).ids) == text
            )
            # The document is what the tokenizer gives for its text; sentences are its lines.
            assert ids == wordpiece.encode(match, add_special_tokens=False).ids
            first, last = shards.doc_sent_offsets[d], shards.doc_sent_offsets[d + 1]
            sentences = [shards.sentence(j).tolist() for j in range(first, last)]
            expected = [
                wordpiece.encode(line, add_special_tokens=False).ids for line in match.splitlines()
            ]
            assert sentences == expected
    assert seen == len(docs)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["special_tokens"]["cls_id"] == 2


def test_byte_level_newlines_end_their_sentence(tmp_path, corpus_dir, byte_bpe):
    prepare_shards(Corpus.from_paths(corpus_dir), byte_bpe, tmp_path, workers=0, progress=False)
    shards = ShardSet(tmp_path)
    doc = shards.decode(shards.document(0).tolist())
    sentences = [
        shards.decode(shards.sentence(j).tolist())
        for j in range(shards.doc_sent_offsets[0], shards.doc_sent_offsets[1])
    ]
    assert "".join(sentences) == doc  # lossless, newlines kept
    assert sentences[0].startswith("Doc") and sentences[-1].endswith(".\n")
    assert all(s.startswith("\nDoc") for s in sentences[1:])  # a line break leads its line


LOSSLESS = (
    "Title\tline  \n\n\n    indented code:\n\tif x:  \n\t\treturn 1\n   \n"
    "last line, trailing spaces   \n\n",
    "  second document starts indented\n\ttab\n",
    "no final newline\n\n\n\nafter three blank lines \t",
)


@pytest.mark.parametrize("kind", ["char", "byte-bpe"])
def test_shards_decode_back_to_the_exact_text(tmp_path, kind):
    for i, text in enumerate(LOSSLESS):
        (tmp_path / f"d{i}.txt").write_text(text, encoding="utf-8")
    corpus = Corpus.from_paths(sorted(tmp_path.glob("d*.txt")))
    tok = train_tokenizer(corpus, kind=kind, vocab_size=300 if kind == "byte-bpe" else 60)
    for chunk_chars in (1 << 18, 12):  # whole documents, and cut in pieces
        out = tmp_path / f"s{chunk_chars}"
        prepare_shards(
            corpus, tok, out, val_fraction=0.0, workers=0, progress=False, chunk_chars=chunk_chars
        )
        shards = ShardSet(out)
        assert [shards.decode(shards.document(d)) for d in range(shards.n_docs)] == list(LOSSLESS)
        for d, text in enumerate(LOSSLESS):
            ids = shards.document(d).tolist()
            assert ids == tok.encode(text, add_special_tokens=False).ids
            first, last = shards.doc_sent_offsets[d], shards.doc_sent_offsets[d + 1]
            sentences = [shards.decode(shards.sentence(j)) for j in range(first, last)]
            assert "".join(sentences) == text
            assert [s.strip() for s in sentences] == [
                ln.strip() for ln in text.splitlines() if ln.strip()
            ]
    # blank-line documents keep everything inside a paragraph, the blank lines are boundaries
    paragraphs = Corpus.from_paths(tmp_path / "d0.txt", split_documents="blank-line")
    prepare_shards(paragraphs, tok, tmp_path / "p", val_fraction=0.0, workers=0, progress=False)
    shards = ShardSet(tmp_path / "p")
    decoded = [shards.decode(shards.document(d)) for d in range(shards.n_docs)]
    assert decoded == [
        "Title\tline  \n",
        "    indented code:\n\tif x:  \n\t\treturn 1\n",
        "last line, trailing spaces   \n",
    ]


def test_old_shard_versions_are_prepared_again(tmp_path, byte_bpe):
    corpus = Corpus.from_texts(["a b\n\n", "c\n"])
    prepare_shards(corpus, byte_bpe, tmp_path, workers=0, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["version"] = 1
    del meta["key"]["version"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TriformError, match="format version 1"):
        ShardSet(tmp_path)
    assert not prepare_shards(corpus, byte_bpe, tmp_path, workers=0, progress=False).reused
    assert ShardSet(tmp_path).n_tokens > 0


def test_workers_give_identical_shards(tmp_path, corpus_dir, byte_bpe):
    corpus = Corpus.from_paths(corpus_dir)
    a = prepare_shards(corpus, byte_bpe, tmp_path / "a", workers=0, progress=False, chunk_chars=500)
    b = prepare_shards(corpus, byte_bpe, tmp_path / "b", workers=2, progress=False, chunk_chars=500)
    assert a.meta["splits"] == b.meta["splits"]
    for split in ("train", "val"):
        for suffix in (".bin", ".docs.npy", ".sents.npy", ".doc_sents.npy"):
            assert (tmp_path / "a" / f"{split}{suffix}").read_bytes() == (
                tmp_path / "b" / f"{split}{suffix}"
            ).read_bytes()


def test_long_documents_are_cut_but_stay_one_document(tmp_path, byte_bpe):
    lines = [f"line {i} alpha beta" for i in range(400)]
    corpus = Corpus.from_texts(["\n".join(lines), "short doc\nsecond line"])
    prepare_shards(
        corpus, byte_bpe, tmp_path, val_fraction=0.0, workers=0, progress=False, chunk_chars=300
    )
    shards = ShardSet(tmp_path)
    assert shards.n_docs == 2 and shards.n_sents == 402
    assert shards.decode(shards.document(0).tolist()) == "\n".join(lines)


def test_rerun_is_a_noop_and_other_tokenizers_are_refused(
    tmp_path, corpus_dir, wordpiece, byte_bpe
):
    corpus = Corpus.from_paths(corpus_dir)
    out = tmp_path / "s"
    prepare_shards(corpus, wordpiece, out, workers=0, progress=False)
    stamp = (out / "train.bin").stat().st_mtime_ns
    again = prepare_shards(Corpus.from_paths(corpus_dir), wordpiece, out, workers=0, progress=False)
    assert again.reused and (out / "train.bin").stat().st_mtime_ns == stamp
    with pytest.raises(TriformError, match="different tokenizer"):
        ShardSet(out, tokenizer=byte_bpe)
    with pytest.raises(TriformError, match="different tokenizer"):
        prepare_shards(corpus, byte_bpe, out, workers=0, progress=False)
    with pytest.raises(TriformError, match="different corpus"):
        prepare_shards(corpus, wordpiece, out, workers=0, progress=False, seed=1)
    info = prepare_shards(corpus, byte_bpe, out, workers=0, progress=False, overwrite=True)
    assert not info.reused and ShardSet(out, tokenizer=byte_bpe).n_tokens > 0
    # An incomplete folder is rebuilt.
    (out / "val.sents.npy").unlink()
    assert not prepare_shards(corpus, byte_bpe, out, workers=0, progress=False).reused


def test_splits_are_by_document(tmp_path, byte_bpe):
    corpus = Corpus.from_texts(["only one\ndocument", "and another"])
    prepare_shards(corpus, byte_bpe, tmp_path / "a", val_fraction=0.01, workers=0, progress=False)
    assert ShardSet(tmp_path / "a", "train").n_docs == 1  # a tiny fraction still gets one
    assert ShardSet(tmp_path / "a", "val").n_docs == 1
    prepare_shards(
        Corpus.from_texts(["solo"]),
        byte_bpe,
        tmp_path / "b",
        val_fraction=0.5,
        workers=0,
        progress=False,
    )
    assert ShardSet(tmp_path / "b", "train").n_docs == 1
    assert ShardSet(tmp_path / "b", "val").n_tokens == 0


def test_the_sentence_index_is_written_a_chunk_at_a_time(tmp_path):
    """Sentence lengths go to a file as they come; the offsets are summed in chunks (here of
    3) into the same array a whole-memory cumulative sum gives, and the last document can
    be taken back with its sentences (when a split would stay empty)."""
    writer = _SplitWriter(tmp_path / "train.bin", np.dtype(np.uint16))
    rng = np.random.default_rng(0)
    lens_all = []
    for doc in range(5):
        lens = rng.integers(1, 6, size=int(rng.integers(1, 5)))
        ids = rng.integers(0, 100, size=int(lens.sum()))
        writer.append(ids, np.array([doc]), np.array([len(ids)]), np.array([len(lens)]), lens)
        lens_all.append(lens)
    ids, doc, lens = writer.pop_last_document()
    assert doc.tolist() == [4] and lens.tolist() == lens_all[-1].tolist()
    assert len(ids) == int(lens_all[-1].sum())
    counts = writer.finish(tmp_path, "train", chunk=3)
    expected = np.r_[0, np.cumsum(np.concatenate(lens_all[:-1]))]
    assert np.array_equal(np.load(tmp_path / "train.sents.npy"), expected)
    assert counts["sentences"] == len(expected) - 1 and counts["documents"] == 4
    assert not (tmp_path / "train.sent_lens.tmp").exists()


def test_errors(tmp_path, byte_bpe):
    with pytest.raises(TriformError, match="no shards"):
        ShardSet(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="val_fraction"):
        prepare_shards(Corpus.from_texts(["x"]), byte_bpe, tmp_path, val_fraction=1.0)
    with pytest.raises(TriformError, match="no text"):
        prepare_shards(
            Corpus.from_texts(["\n\n"]), byte_bpe, tmp_path / "e", workers=0, progress=False
        )
    prepare_shards(
        Corpus.from_texts(["a b", "c"]), byte_bpe, tmp_path / "ok", workers=0, progress=False
    )
    with pytest.raises(TriformError, match="no split"):
        ShardSet(tmp_path / "ok", split="test")
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_cli_two_commands(tmp_path, corpus_dir, capsys):
    tok = tmp_path / "tok.json"
    assert (
        main(
            [
                "tokenizer",
                "train",
                str(corpus_dir),
                "--kind",
                "bpe",
                "--vocab-size",
                "200",
                "--out",
                str(tok),
            ]
        )
        == 0
    )
    out = tmp_path / "shards"
    argv = [
        "data",
        "prepare",
        str(corpus_dir),
        "--tokenizer",
        str(tok),
        "--out",
        str(out),
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["data", "info", str(out)]) == 0
    assert "train:" in capsys.readouterr().out
    other = tmp_path / "other.json"
    save_tokenizer(train_tokenizer(["x y z"] * 5, kind="char", vocab_size=20), other)
    argv[argv.index(str(tok))] = str(other)
    assert main(argv) == 2
    assert "different tokenizer" in capsys.readouterr().err


SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"


def test_shakespeare_folder_to_shards(tmp_path):
    """The README's two commands on real text (two plays, by glob)."""
    if not SHAKESPEARE.is_dir():
        pytest.skip(f"shared corpus not found at {SHAKESPEARE}")
    plays = str(SHAKESPEARE / "[hm]a*.txt")  # hamlet, macbeth
    tok = tmp_path / "tokenizer.json"
    assert (
        main(
            [
                "tokenizer",
                "train",
                plays,
                "--kind",
                "byte-bpe",
                "--vocab-size",
                "2000",
                "--out",
                str(tok),
            ]
        )
        == 0
    )
    out = tmp_path / "shards"
    assert (
        main(
            [
                "data",
                "prepare",
                plays,
                "--tokenizer",
                str(tok),
                "--out",
                str(out),
                "--workers",
                "2",
                "--val-fraction",
                "0.5",
            ]
        )
        == 0
    )
    train, val = ShardSet(out, "train"), ShardSet(out, "val")
    assert train.n_docs == val.n_docs == 1 and train.n_tokens > 30_000
    text = train.decode(train.document(0)[:200].tolist())
    assert "by William Shakespeare" in text


@pytest.mark.parametrize("kind", ["char", "byte-bpe", "wordpiece", "bpe", "unigram"])
def test_every_kind_cuts_long_documents_without_changing_ids(tmp_path, kind):
    text = "".join(LOSSLESS) * 3
    tok = train_tokenizer([text] * 3, kind=kind, vocab_size=300 if kind == "byte-bpe" else 160)
    assert cuts_are_lossless(tok)
    corpus = Corpus.from_texts([text])
    prepare_shards(
        corpus, tok, tmp_path, val_fraction=0.0, workers=0, progress=False, chunk_chars=40
    )
    shards = ShardSet(tmp_path)
    assert shards.document(0).tolist() == tok.encode(text, add_special_tokens=False).ids
    sentences = [shards.sentence(j).tolist() for j in range(shards.n_sents)]
    assert [i for s in sentences for i in s] == shards.document(0).tolist()
    if kind in ("char", "byte-bpe"):
        assert shards.decode(shards.document(0)) == text
