"""Batch readers: layouts, framing, document boundaries, NSP/SOP semantics, and determinism
in (seed, step)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from triform.data import Corpus
from triform.data.readers import CausalWindows, DocumentSequences, PackedSequences, SentencePairs
from triform.data.shards import ShardSet, prepare_shards
from triform.errors import ConfigError
from triform.tokenizers import SpecialTokens, train_tokenizer

N_DOCS = 8


def _doc(d: int) -> list[str]:
    """Document d: lines ``<Dd Lnnn>`` of varying length, so a decoded span names its lines."""
    return [f"<D{d} L{i:03d}>" + "~" * ((d + i) % 5) for i in range(20 + 3 * d)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> ShardSet:
    """Character-level shards with BERT's special tokens: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3."""
    corpus = Corpus.from_texts([_doc(d) for d in range(N_DOCS)])
    tok = train_tokenizer(corpus, kind="char", vocab_size=60, family="bert")
    out = tmp_path_factory.mktemp("shards")
    prepare_shards(corpus, tok, out, val_fraction=0.25, workers=0, progress=False, seed=1)
    return ShardSet(out, "train", tokenizer=tok)


def _stream(shards: ShardSet, sep: int | None) -> np.ndarray:
    parts = []
    for d in range(shards.n_docs):
        parts.append(np.asarray(shards.document(d), dtype=np.int64))
        if sep is not None:
            parts.append(np.array([sep]))
    return np.concatenate(parts)


def _is_slice(row: np.ndarray, stream: np.ndarray) -> bool:
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(row))
    return bool((windows == row).all(axis=1).any())


def test_causal_windows_are_stream_slices(shards):
    sep = shards.special.sep_id  # no eos in a BERT vocabulary: "auto" takes [SEP]
    reader = CausalWindows(shards, seq_len=32, batch_size=4, seed=0)
    assert reader.separator_id == sep
    stream = _stream(shards, sep)
    assert reader.stream_len == len(stream)
    batch = reader.batch(3)
    assert batch["input_ids"].shape == (4, 33) and batch["input_ids"].dtype == torch.int64
    for row in batch["input_ids"].numpy():
        assert _is_slice(row, stream)
    plain = CausalWindows(shards, seq_len=32, batch_size=4, seed=0, separator_id=None)
    for row in plain.batch(0)["input_ids"].numpy():
        assert _is_slice(row, _stream(shards, None))


def test_determinism_and_epochs(shards):
    a = CausalWindows(shards, seq_len=16, batch_size=5, seed=7)
    b = CausalWindows(shards, seq_len=16, batch_size=5, seed=7)
    c = CausalWindows(shards, seq_len=16, batch_size=5, seed=8)
    for step in (0, 1, 50, 3, 1000):  # any order: a pure function of (seed, step)
        assert torch.equal(a.batch(step)["input_ids"], b.batch(step)["input_ids"])
    assert not torch.equal(a.batch(0)["input_ids"], c.batch(0)["input_ids"])
    # One epoch visits every window once.
    n = a.n_windows
    items = np.concatenate([a.order.rows(s)[0] for s in range(n)])[:n]  # batch 5 x n steps
    assert sorted(items[:n].tolist()) == list(range(n))
    assert a.tokens_per_epoch == n * 16 and a.num_batches == n // 5


def test_eval_order_is_fixed(shards):
    reader = CausalWindows(shards, seq_len=16, batch_size=2, seed=0, shuffle=False)
    first = reader.batch(0)["input_ids"].numpy()
    stream = _stream(shards, shards.special.sep_id)
    assert np.array_equal(first[0], stream[:17]) and np.array_equal(first[1], stream[16:33])
    batches = list(reader)
    assert len(batches) == reader.num_batches
    assert torch.equal(batches[0]["input_ids"], reader.batch(0)["input_ids"])


def test_packed_sequences_framing(shards):
    sp = shards.special
    reader = PackedSequences(
        shards, seq_len=24, batch_size=3, seed=0, cls_id=sp.cls_id, sep_id=sp.sep_id
    )
    batch = reader.batch(2)
    ids = batch["input_ids"].numpy()
    assert ids.shape == (3, 24) and batch["attention_mask"].all()
    assert (ids[:, 0] == sp.cls_id).all() and (ids[:, -1] == sp.sep_id).all()
    stream = _stream(shards, sp.sep_id)
    for row in ids:
        assert _is_slice(row[1:-1], stream)
    with pytest.raises(ConfigError, match="not both"):
        PackedSequences(shards, 24, 3, cls_id=2, bos_id=2)
    with pytest.raises(ConfigError, match="no room"):
        PackedSequences(shards, 2, 3, cls_id=2, sep_id=3)


def test_document_sequences_respect_boundaries(shards):
    sp = shards.special
    reader = DocumentSequences(
        shards, seq_len=40, batch_size=16, seed=0, cls_id=sp.cls_id, sep_id=sp.sep_id
    )
    docs = [np.asarray(shards.document(d)) for d in range(shards.n_docs)]
    total = 0
    for step in range(reader.num_batches):
        batch = reader.batch(step)
        ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
        for row, m in zip(ids, mask, strict=True):
            n = int(m.sum())
            assert row[0] == sp.cls_id and row[n - 1] == sp.sep_id
            assert (row[n:] == sp.pad_id).all() and m[:n].all()
            content = row[1 : n - 1]
            assert any(_is_slice(content, doc) for doc in docs if len(doc) >= len(content))
            total += len(content)
    assert reader.tokens_per_epoch == sum(len(d) for d in docs)
    assert total <= reader.tokens_per_epoch


def _segments(shards, row, types, mask):
    """(doc, line) tags of the two segments of a [CLS] A [SEP] B [SEP] row."""
    n = int(mask.sum())
    first_sep = int(np.argmax(types)) - 1  # types turn 1 right after the first [SEP]
    a = shards.decode(row[1:first_sep].tolist())
    b = shards.decode(row[first_sep + 1 : n - 1].tolist())
    tags = [[(int(d), int(i)) for d, i in re.findall(r"<D(\d) L(\d{3})>", s)] for s in (a, b)]
    return a, b, tags


@pytest.mark.parametrize("mode", ["nsp", "sop"])
def test_sentence_pairs(shards, mode):
    sp = shards.special
    reader = SentencePairs(shards, seq_len=48, batch_size=32, seed=0, mode=mode)
    labels, checked = [], 0
    for step in range(4):
        batch = reader.batch(step)
        ids, types, mask = (
            batch[k].numpy() for k in ("input_ids", "token_type_ids", "attention_mask")
        )
        assert ids.shape == types.shape == mask.shape == (32, 48)
        for row, t, m, label in zip(ids, types, mask, batch["pair_labels"].numpy(), strict=True):
            n = int(m.sum())
            assert row[0] == sp.cls_id and row[n - 1] == sp.sep_id and (row[n:] == sp.pad_id).all()
            assert (row[:n] == sp.sep_id).sum() == 2 and t[n - 1] == 1 and t[0] == 0
            a, b, (tags_a, tags_b) = _segments(shards, row, t, m)
            assert a and b
            labels.append(int(label))
            if not tags_a or not tags_b:
                continue
            checked += 1
            (da, la), (db, lb) = tags_a[-1], tags_b[0]
            if mode == "nsp" and label == 0:  # B continues A in its document
                assert b.startswith("\n<D") and (db, lb) == (da, la + 1)  # line break leads
            elif mode == "nsp":  # B from another document
                assert db != da
            elif label == 0:  # SOP in order
                assert (db, lb) == (da, la + 1)
            else:  # SOP swapped: the second segment came first
                assert db == da and tags_b[-1][1] + 1 == tags_a[0][1]
    assert checked > 60
    assert 0.3 < np.mean(labels) < 0.7
    again = SentencePairs(shards, seq_len=48, batch_size=32, seed=0, mode=mode).batch(2)
    assert all(torch.equal(again[k], reader.batch(2)[k]) for k in again)


def test_sentence_pairs_need_cls_and_sep(shards):
    with pytest.raises(ConfigError, match="cls_id"):
        SentencePairs(shards, 32, 2, special=SpecialTokens(sep_id=3))
    with pytest.raises(ConfigError, match="mode"):
        SentencePairs(shards, 32, 2, mode="mlm")


def test_val_split_reader(shards):
    val = ShardSet(shards.path, "val", tokenizer=shards.tokenizer)
    assert val.n_docs >= 1
    reader = DocumentSequences(val, seq_len=32, batch_size=2, shuffle=False)
    assert torch.equal(reader.batch(0)["input_ids"], reader.batch(0)["input_ids"])
    with pytest.raises(ConfigError, match="too few"):
        CausalWindows(val, seq_len=100_000, batch_size=2)


def test_readers_are_fast(shards):
    """Vectorised: thousands of rows per second even on a tiny split (no per-token loops)."""
    import time

    reader = CausalWindows(shards, seq_len=256, batch_size=64, seed=0)
    start = time.perf_counter()
    for step in range(20):
        reader.batch(step)
    assert (time.perf_counter() - start) < 1.0


READER_KINDS = {
    "causal": lambda s, **kw: CausalWindows(s, 16, 6, 3, **kw),
    "packed": lambda s, **kw: PackedSequences(
        s, 16, 6, 3, cls_id=s.special.cls_id, sep_id=s.special.sep_id, **kw
    ),
    "documents": lambda s, **kw: DocumentSequences(
        s, 24, 6, 3, cls_id=s.special.cls_id, sep_id=s.special.sep_id, **kw
    ),
    "nsp": lambda s, **kw: SentencePairs(s, 32, 6, 3, mode="nsp", short_seq_prob=0.3, **kw),
    "sop": lambda s, **kw: SentencePairs(s, 32, 6, 3, mode="sop", **kw),
}


@pytest.mark.parametrize("kind", sorted(READER_KINDS))
@pytest.mark.parametrize("world", [2, 3])
def test_rank_shares_partition_the_global_batch(shards, kind, world):
    """Rank r of w reads its contiguous share of the global batch: the shares are disjoint
    and, in rank order, equal the batch one process reads (every key, any step)."""
    make = READER_KINDS[kind]
    whole = make(shards)
    ranks = [make(shards, rank=r, world=world) for r in range(world)]
    for step in (0, 1, 7, 40):  # 40: past an epoch end for the smaller splits
        expected = whole.batch(step)
        parts = [reader.batch(step) for reader in ranks]
        assert all(len(p["input_ids"]) == 6 // world for p in parts)
        for key, value in expected.items():
            assert torch.equal(torch.cat([p[key] for p in parts]), value), (key, step)
        items = [whole.order.rows(step)[0][reader.share] for reader in ranks]
        assert len(set(np.concatenate(items).tolist())) == 6  # disjoint rows


def test_rank_share_errors(shards):
    with pytest.raises(ConfigError, match="6 rows does not split over 4 processes"):
        CausalWindows(shards, 16, 6, rank=1, world=4)
    with pytest.raises(ConfigError, match="rank must be in"):
        CausalWindows(shards, 16, 6, rank=2, world=2)


@pytest.fixture(scope="module")
def word_shards(tmp_path_factory) -> tuple[ShardSet, np.ndarray]:
    """Byte-level BPE shards of prose, and the vocabulary's word-start table."""
    from triform.objectives.masked_lm import word_start_table

    words = "the quick brown fox jumps over lazy dogs while unbelievable things happen"
    texts = [" ".join(words.split()[(d + i) % 12] for i in range(300)) for d in range(6)]
    tok = train_tokenizer(texts, kind="byte-bpe", vocab_size=300, family="bart")
    out = tmp_path_factory.mktemp("word_shards")
    corpus = Corpus.from_texts(texts)
    prepare_shards(corpus, tok, out, val_fraction=0.2, workers=0, progress=False, seed=1)
    return ShardSet(out, "train", tokenizer=tok), word_start_table(tok)


def test_document_chunks_begin_at_word_starts(word_shards) -> None:
    """BART's reader: a document's chunks after the first begin a word, none is longer than
    the content length, and together they are the document, token for token."""
    shards, starts = word_shards
    plain = DocumentSequences(shards, 24, 4, bos_id=0, eos_id=2, shuffle=False)
    aligned = DocumentSequences(shards, 24, 4, bos_id=0, eos_id=2, shuffle=False,
                                word_starts=starts)  # fmt: skip
    firsts = np.asarray(shards.doc_offsets[:-1])  # a document's first chunk starts it

    def later(chunks: np.ndarray) -> np.ndarray:
        return chunks[~np.isin(chunks, firsts)]

    assert not starts[shards.tokens[later(plain.chunk_starts)]].all()  # mid-word without it
    assert starts[shards.tokens[later(aligned.chunk_starts)]].all()
    assert (aligned.chunk_lens <= aligned.content_len).all()
    for d in range(shards.n_docs):
        begin, end = shards.doc_offsets[d], shards.doc_offsets[d + 1]
        inside = (aligned.chunk_starts >= begin) & (aligned.chunk_starts < end)
        chunks = zip(aligned.chunk_starts[inside], aligned.chunk_lens[inside], strict=True)
        pieces = [shards.tokens[s : s + n] for s, n in chunks]
        assert np.array_equal(np.concatenate(pieces), shards.tokens[begin:end])


def test_packed_windows_begin_at_word_starts(word_shards) -> None:
    """T5's reader: every window's first token begins a word (moved back a few tokens)."""
    shards, starts = word_shards
    reader = PackedSequences(shards, 32, 8, separator_id=2, word_starts=starts)
    for step in range(5):
        first = reader.batch(step)["input_ids"][:, 0].numpy()
        assert starts[first].all(), step
