"""Corpora: files, folders, globs, JSONL, gzip; document splitting; bad input; the default."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from triform.data import Corpus, default_corpus
from triform.errors import ConfigError, TriformError


def _write(path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_text_file_documents_keep_every_character(tmp_path):
    text = "First line.  \r\n\n   indented\tline\n \t\nsame doc\n\n\nlast \n"
    _write(tmp_path / "a.txt", text)
    docs = list(Corpus.from_paths(tmp_path / "a.txt").documents())
    assert docs == [text.replace("\r\n", "\n")]  # one doc per file, exactly
    docs = list(Corpus.from_paths(tmp_path / "a.txt", split_documents="blank-line").documents())
    assert docs == ["First line.  \n", "   indented\tline\n", "same doc\n", "last \n"]
    docs = list(Corpus.from_paths(str(tmp_path / "a.txt"), split_documents="line").documents())
    assert docs == ["First line.  ", "   indented\tline", "same doc", "last "]


def test_folder_glob_order_and_formats(tmp_path):
    _write(tmp_path / "b" / "z.txt", "zed")
    _write(tmp_path / "b" / "a.txt", "alpha")
    _write(tmp_path / "b" / "notes.tsv", "ignored\tin folders")
    _write(tmp_path / "b" / ".hidden" / "h.txt", "hidden")
    records = [{"text": "one\ntwo"}, {"text": "three"}, {"other": 1}, {"text": 5}]
    jsonl = "\n".join(json.dumps(r) for r in records) + "\nnot json\n"
    _write(tmp_path / "b" / "m.jsonl", jsonl)
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("gz text\n\nsecond")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"body": "from gzipped jsonl"}) + "\n")
    corpus = Corpus.from_paths([tmp_path / "b", str(tmp_path / "*.gz")])
    docs = list(corpus.documents())
    assert docs == ["alpha", "one\ntwo", "three", "zed", "gz text\n\nsecond"]
    assert len(corpus.skipped) == 2  # bad records of m.jsonl, d.jsonl.gz lacks "text"
    docs = list(Corpus.from_paths(tmp_path / "d.jsonl.gz", text_field="body").documents())
    assert docs == ["from gzipped jsonl"]
    again = list(Corpus.from_paths([tmp_path / "b", str(tmp_path / "*.gz")]).documents())
    assert again == ["alpha", "one\ntwo", "three", "zed", "gz text\n\nsecond"]


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(TriformError, match="not found"):
        Corpus.from_paths(tmp_path / "missing")
    with pytest.raises(TriformError, match="no files match"):
        Corpus.from_paths(str(tmp_path / "*.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TriformError, match="holds no"):
        Corpus.from_paths(tmp_path / "empty")
    _write(tmp_path / "blank.txt", "\n  \n\n")
    with pytest.raises(TriformError, match="no text"):
        list(Corpus.from_paths(tmp_path / "blank.txt").documents())
    with pytest.raises(ConfigError, match="split_documents"):
        Corpus.from_paths(tmp_path / "blank.txt", split_documents="paragraph")


def test_binary_and_non_utf8_files_are_skipped_with_a_warning(tmp_path, caplog):
    _write(tmp_path / "good.txt", "fine text")
    _write(tmp_path / "image.txt", b"\x89PNG\x00\x00\x01binary")
    _write(tmp_path / "latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"))
    _write(tmp_path / "broken.txt.gz", b"\x1f\x8b\x08\x00garbage")
    with caplog.at_level(logging.WARNING, logger="triform.data"):
        corpus = Corpus.from_paths(tmp_path)
        assert list(corpus.documents()) == ["fine text"]
    assert sorted(reason.split(" ")[0] for _, reason in corpus.skipped) == [
        "binary",
        "cannot",
        "not",
    ]
    assert "skipping" in caplog.text
    with pytest.raises(TriformError, match="latin1.txt: not UTF-8"):
        list(Corpus.from_paths(tmp_path / "latin1.txt", on_error="raise").documents())


def test_late_decode_error_keeps_the_good_part(tmp_path):
    good = "ok line\n" * 2000  # past the sniffed head
    _write(tmp_path / "late.txt", good.encode() + b"bad \xff byte\n")
    corpus = Corpus.from_paths(tmp_path / "late.txt")
    docs = list(corpus.documents())
    assert len(corpus.skipped) == 1 and len(docs) == 1 and docs[0].startswith("ok line\nok")


def test_texts_pieces_and_fingerprint(tmp_path):
    text = "".join(f"line {i}  \n\n" for i in range(100))
    _write(tmp_path / "a.txt", text)
    corpus = Corpus.from_paths(tmp_path / "a.txt")
    pieces = list(corpus.texts(max_chars=100))
    assert all(len(p) <= 100 for p in pieces) and len(pieces) > 5
    assert "".join(pieces) == text  # cut before line breaks, nothing lost
    assert all(p.startswith("line") for p in pieces[:1]) and pieces[1].startswith("  \n\nline")
    before = corpus.fingerprint()
    assert Corpus.from_paths(tmp_path / "a.txt").fingerprint() == before
    _write(tmp_path / "a.txt", "changed")
    assert Corpus.from_paths(tmp_path / "a.txt").fingerprint() != before


def test_in_memory_corpus_and_max_bytes():
    corpus = Corpus.from_texts(["a b\nc\n", ["x", "", "y"], " \n\t"])
    assert list(corpus.documents()) == ["a b\nc\n", "x\n\ny"]
    paragraphs = Corpus.from_texts(["a\n\n b\n  \nc"], split_documents="blank-line")
    assert list(paragraphs.documents()) == ["a\n", " b\n", "c"]
    capped = Corpus.from_texts(["x" * 100] * 10)
    capped.max_bytes = 250
    assert len(list(capped.documents())) == 3


def test_default_corpus_is_deterministic_and_big_enough():
    corpus = default_corpus()
    assert corpus.total_bytes() > 5_000_000
    first = [doc for _, doc in zip(range(100), corpus.documents(), strict=False)]
    again = [doc for _, doc in zip(range(100), default_corpus().documents(), strict=False)]
    assert first == again and all(doc.strip() for doc in first)
    small = list(default_corpus(max_bytes=200_000).documents())
    size = sum(len(doc) for doc in small)
    assert 200_000 <= size < 1_000_000
    assert any("def " in doc and "\n\n" in doc for doc in small)  # blank lines kept
    with pytest.raises(ConfigError):
        default_corpus(parts=("wikipedia",))


def test_default_corpus_docstrings_part():
    docs = list(default_corpus(parts=("docstrings",), max_bytes=50_000).documents())
    lines = [line for doc in docs for line in doc.splitlines()]
    assert any(line.startswith("Return ") for line in lines)
    assert not any(line.startswith("import ") for line in lines)  # prose, not module code
