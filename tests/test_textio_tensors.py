"""The shared helpers: pad_rows (one padding helper for inference and the commands) and the
input readers (text kept exactly, JSONL with line numbers, one-line errors)."""

from __future__ import annotations

import pytest
import torch

from triform.errors import TriformError
from triform.tensors import pad_rows
from triform.textio import read_jsonl, read_lines, read_text


def test_pad_rows_right_left_and_width():
    ids, mask = pad_rows([[1, 2, 3], [4], []], 0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]] and ids.dtype == torch.long
    ids, mask = pad_rows([[1, 2, 3], [4]], -100, left=True, width=5)
    assert ids.tolist() == [[-100, -100, 1, 2, 3], [-100, -100, -100, -100, 4]]
    assert mask.sum(1).tolist() == [3, 1]
    assert pad_rows([[]], 7)[0].tolist() == [[7]]  # never zero-width


def test_readers(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfline one  \r\n\r\n\tline two\n")
    assert read_text(path) == "line one  \n\n\tline two\n"  # BOM dropped, \r\n read as \n
    assert read_lines(path) == ["line one  ", "\tline two"]
    (tmp_path / "b.txt").write_bytes(b"caf\xe9")
    with pytest.raises(TriformError, match=r"b.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_text(tmp_path / "b.txt")
    with pytest.raises(TriformError, match="input file not found"):
        read_lines(tmp_path / "missing.txt")
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(read_jsonl(rows)) == [(1, {"a": 1}), (3, {"a": 2})]
    rows.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(TriformError, match="r.jsonl:2: expected a JSON object"):
        list(read_jsonl(rows))
    rows.write_text("{oops\n")
    with pytest.raises(TriformError, match="r.jsonl:1: malformed JSON"):
        list(read_jsonl(rows))
