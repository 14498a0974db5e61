"""Tokenize a corpus once into memory-mapped token shards, and open them again.

Layout of a shard folder (one set of files per split, ``train`` and ``val``)::

    meta.json              what was built from what: tokenizer hash, corpus fingerprint,
                           counts per split, dtype (written last: its presence = complete)
    tokenizer.json         the tokenizer the shards were made with
    {split}.bin            token ids, raw uint16 (vocabulary <= 65536) or uint32, all
                           documents of the split concatenated with NOTHING between them
    {split}.docs.npy       int64 (n_docs + 1,): document d = tokens[docs[d]:docs[d + 1]]
    {split}.sents.npy      int64 (n_sents + 1,): sentence j = tokens[sents[j]:sents[j + 1]];
                           sentences are the lines of the corpus documents and tile the
                           documents exactly (every document boundary is a sentence boundary)
    {split}.doc_sents.npy  int64 (n_docs + 1,): document d holds sentences
                           doc_sents[d]:doc_sents[d + 1]

No separator or special token is stored: the readers (:mod:`triform.data.readers`) add the
family's separators and framing at read time, so one shard set serves every objective.

Each document is tokenized as one text, exactly as the corpus gives it (every character kept,
see :mod:`triform.data.corpus`), so the ids are what the tokenizer gives for the document and
decode back to it where the tokenizer is lossless (char, byte-level BPE). A very long
document is cut into pieces at sentence boundaries where the tokenizer gives the same ids
for the pieces as for the whole (checked once per tokenizer; otherwise it is encoded whole).
Sentences are the lines of a document (:func:`~triform.data.corpus.sentence_starts`: a line
break and the blank lines and indentation after it lead the next sentence); a token belongs
to the sentence in which it starts.

Documents go to ``val`` with probability ``val_fraction`` (a seeded draw per document, in
corpus order); when that leaves a split empty, one document is moved so that both have one
(if there are two or more documents). With a ``validation`` corpus, the corpus is all
``train`` and the validation corpus all ``val``. Re-running with the same corpus (paths,
sizes, times), tokenizer and options is a no-op.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from triform.data.corpus import Corpus, cut_text, sentence_starts
from triform.errors import ConfigError, TriformError
from triform.outputs import remove_dead_temporaries, set_aside
from triform.tokenizers import SpecialTokens, load_tokenizer, save_tokenizer, tokenizer_hash

log = logging.getLogger("triform.data")

FORMAT = "triform-shards"
# 2: documents keep every character (blank lines, trailing whitespace, final newline) and
# sentences start at line breaks. Shards of another version are prepared again.
VERSION = 2
META_FILE = "meta.json"
SPLITS = ("train", "val")
_SUFFIXES = (".bin", ".docs.npy", ".sents.npy", ".doc_sents.npy")

# An encoding job is a list of items (doc index, text): a document, or a piece of a long one.
Item = tuple[int, str]


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocabulary <= 65536), else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# ---------------------------------------------------------------------------------------
# Worker side: encode a job of documents, find their sentence (line) boundaries.
# ---------------------------------------------------------------------------------------
_WORKER_TOK: tokenizers.Tokenizer | None = None


def _init_worker(tok_json: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core
    global _WORKER_TOK
    _WORKER_TOK = tokenizers.Tokenizer.from_str(tok_json)


def encode_items(
    tok: tokenizers.Tokenizer, items: list[Item]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Encode each item's text (no special tokens) and find its sentences.

    Returns ``ids`` (T,) uint32 of all items concatenated, ``item_tokens`` (I,) int64,
    ``sent_lens`` (S,) int64 token count of each non-empty sentence in order, and
    ``item_sents`` (I,) int64 sentences per item.
    """
    encodings = tok.encode_batch([text for _, text in items], add_special_tokens=False)
    ids, item_tokens, sent_lens, item_sents = [], [], [], []
    for (_, text), enc in zip(items, encodings, strict=True):
        n = len(enc.ids)
        item_tokens.append(n)
        if n == 0:
            item_sents.append(0)
            continue
        ids.append(np.asarray(enc.ids, dtype=np.uint32))
        flat = itertools.chain.from_iterable(enc.offsets)  # faster than np.asarray on tuples
        offsets = np.fromiter(flat, dtype=np.int64, count=2 * n).reshape(n, 2)  # char spans
        starts = np.asarray(sentence_starts(text), dtype=np.int64)  # (S_item,)
        sent_of = np.searchsorted(starts, offsets[:, 0], side="right") - 1  # (n,)
        sent_of = np.maximum.accumulate(np.clip(sent_of, 0, len(starts) - 1))
        counts = np.bincount(sent_of, minlength=len(starts))
        counts = counts[counts > 0]
        sent_lens.append(counts)
        item_sents.append(len(counts))
    cat = np.concatenate
    return (
        cat(ids) if ids else np.zeros(0, np.uint32),
        np.asarray(item_tokens, dtype=np.int64),
        cat(sent_lens).astype(np.int64) if sent_lens else np.zeros(0, np.int64),
        np.asarray(item_sents, dtype=np.int64),
    )


def _encode_job(items: list[Item]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    assert _WORKER_TOK is not None, "worker not initialised"
    return encode_items(_WORKER_TOK, items)


# ---------------------------------------------------------------------------------------
# Main side: cut the corpus into jobs, write what comes back.
# ---------------------------------------------------------------------------------------
_PROBE = "ab cd  \n\n\tef, gh.\nij\n  \n   kl mn\n\n"


def cuts_are_lossless(tok: tokenizers.Tokenizer) -> bool:
    """Whether cutting a text at its sentence boundaries and encoding the pieces gives the ids
    of the whole text (true for the char, byte-level, WordPiece and Metaspace pipelines)."""
    whole = tok.encode(_PROBE, add_special_tokens=False).ids
    pieces = [tok.encode(p, add_special_tokens=False).ids for p in cut_text(_PROBE, 1)]
    return list(itertools.chain.from_iterable(pieces)) == whole


def _jobs(
    documents: Iterable[tuple[int, str]], chunk_chars: int, cut: bool
) -> Iterator[tuple[list[Item], int]]:
    """(items, characters) jobs of about ``chunk_chars`` from (index, document) pairs; long
    documents are cut into pieces (which keep their document index) when ``cut``."""
    items: list[Item] = []
    size = 0
    for doc_index, doc in documents:
        for piece in cut_text(doc, chunk_chars) if cut else [doc]:
            items.append((doc_index, piece))
            size += len(piece)
            if size >= chunk_chars:
                yield items, size
                items, size = [], 0
    if items:
        yield items, size


@dataclass
class _SplitWriter:
    """Appends one split's tokens to its ``.bin`` file and its sentence lengths to a
    temporary file beside it, and keeps the per-document index in memory.

    The sentence index is the large one (8 bytes a line of text): it never stays in memory,
    and its offsets are summed into ``{split}.sents.npy`` a chunk at a time, so the memory
    of a preparation does not grow with the lines of the corpus."""

    path: Path
    dtype: np.dtype
    n_tokens: int = 0
    n_chars: int = 0
    n_sents: int = 0
    item_docs: list[np.ndarray] = field(default_factory=list)
    item_tokens: list[np.ndarray] = field(default_factory=list)
    item_sents: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fh = open(self.path, "wb")  # noqa: SIM115 - closed in finish()
        self.lens_path = self.path.with_suffix(".sent_lens.tmp")
        self.lens = open(self.lens_path, "wb")  # noqa: SIM115 - closed in finish()

    def append(
        self,
        ids: np.ndarray,
        docs: np.ndarray,
        tokens: np.ndarray,
        sents: np.ndarray,
        sent_lens: np.ndarray,
    ) -> None:
        ids.astype(self.dtype, copy=False).tofile(self.fh)
        sent_lens.astype(np.int64, copy=False).tofile(self.lens)
        self.n_tokens += len(ids)
        self.n_sents += len(sent_lens)
        self.item_docs.append(docs)
        self.item_tokens.append(tokens)
        self.item_sents.append(sents)

    def index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-document (doc ids, tokens, sentences), empty docs dropped."""
        cat = np.concatenate
        docs = cat(self.item_docs) if self.item_docs else np.zeros(0, np.int64)
        tokens = cat(self.item_tokens) if self.item_tokens else np.zeros(0, np.int64)
        sents = cat(self.item_sents) if self.item_sents else np.zeros(0, np.int64)
        keep = tokens > 0
        docs, tokens, sents = docs[keep], tokens[keep], sents[keep]
        if len(docs) == 0:
            return docs, tokens, sents
        starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])  # pieces of one document
        return docs[starts], np.add.reduceat(tokens, starts), np.add.reduceat(sents, starts)

    def _cut(
        self, fh: Any, path: Path, count: int, total: int, itemsize: int, dtype: Any
    ) -> np.ndarray:
        """The last ``count`` of ``total`` items of an open file, read back and cut off."""
        fh.flush()
        tail = np.fromfile(path, dtype=dtype, count=count, offset=(total - count) * itemsize)
        fh.truncate((total - count) * itemsize)
        fh.seek(0, os.SEEK_END)
        return tail

    def pop_last_document(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove the last document: returns its ids, its doc index (1,) and sentence lengths."""
        docs, tokens, sents = self.index()
        n_tok, n_sent = int(tokens[-1]), int(sents[-1])
        data = self._cut(self.fh, self.path, n_tok, self.n_tokens, self.dtype.itemsize, self.dtype)
        lens = self._cut(self.lens, self.lens_path, n_sent, self.n_sents, 8, np.int64)
        self.n_tokens -= n_tok
        self.n_sents -= n_sent
        self.item_docs, self.item_tokens, self.item_sents = [docs[:-1]], [tokens[:-1]], [sents[:-1]]
        return data, docs[-1:], lens

    def finish(self, out: Path, name: str, chunk: int = 1 << 20) -> dict[str, int]:
        """Close the token file, write the index arrays; returns the split's counts."""
        self.fh.close()
        self.lens.close()
        _, tokens, sents = self.index()
        cum = np.cumsum
        np.save(out / f"{name}.docs.npy", np.r_[0, cum(tokens)].astype(np.int64))
        np.save(out / f"{name}.doc_sents.npy", np.r_[0, cum(sents)].astype(np.int64))
        header = {"descr": "<i8", "fortran_order": False, "shape": (self.n_sents + 1,)}
        with open(out / f"{name}.sents.npy", "wb") as npy, open(self.lens_path, "rb") as lens:
            np.lib.format.write_array_header_1_0(npy, header)
            np.zeros(1, np.int64).tofile(npy)
            carry = 0
            while part := lens.read(chunk * 8):
                offsets = np.cumsum(np.frombuffer(part, dtype="<i8")) + carry
                offsets.astype("<i8", copy=False).tofile(npy)
                carry = int(offsets[-1])
        self.lens_path.unlink()
        return {
            "tokens": int(self.n_tokens),
            "documents": len(tokens),
            "sentences": self.n_sents,
            "chars": int(self.n_chars),
        }


@dataclass
class ShardInfo:
    """What :func:`prepare_shards` did: the metadata, and whether it was a no-op."""

    out_dir: Path
    meta: dict[str, Any]
    reused: bool
    seconds: float

    @property
    def chars_per_second(self) -> float:
        chars = sum(s["chars"] for s in self.meta["splits"].values())
        return chars / self.seconds if self.seconds > 0 else float("inf")


def _read_meta(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TriformError(f"{path} is not a valid shard metadata file ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TriformError(f"{path} is not a triform shard metadata file")
    return meta


def _complete(out_dir: Path, meta: dict[str, Any]) -> bool:
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, counts in meta["splits"].items():
        if any(not (out_dir / f"{split}{s}").is_file() for s in _SUFFIXES):
            return False
        if (out_dir / f"{split}.bin").stat().st_size != counts["tokens"] * itemsize:
            return False
    return (out_dir / "tokenizer.json").is_file()


def prepare_shards(
    corpus: Corpus,
    tok: tokenizers.Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    val_fraction: float = 0.01,
    workers: int = 2,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    chunk_chars: int = 1 << 18,
    validation: Corpus | None = None,
) -> ShardInfo:
    """Tokenize ``corpus`` with ``tok`` into shards in ``out_dir`` (see the module docstring).

    ``validation``: a corpus that is the ``val`` split (``corpus`` is then all ``train``, and
    ``val_fraction`` must be 0).

    ``workers`` processes encode in parallel (0: in this process, with HuggingFace's own
    threads). A folder that already holds these shards (same corpus fingerprint, tokenizer
    and options) is left alone; one that holds other shards is refused unless ``overwrite``,
    and then moved into ``previous-<time>/`` once the new shards are complete. Temporary
    folders of killed runs are removed first.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    if chunk_chars < 1:
        raise ConfigError(f"chunk_chars must be positive, got {chunk_chars}")
    if validation is not None and val_fraction > 0:
        raise ConfigError("with a validation corpus, val_fraction must be 0")
    out = Path(out_dir)
    key = {
        "version": VERSION,
        "tokenizer_hash": tokenizer_hash(tok),
        "corpus_fingerprint": corpus.fingerprint(),
        "validation_fingerprint": validation.fingerprint() if validation is not None else None,
        "val_fraction": float(val_fraction),
        "seed": int(seed),
    }
    if out.exists() and not out.is_dir():
        raise TriformError(f"shard output {out} exists and is not a folder")
    remove_dead_temporaries(out)
    old = _read_meta(out) if out.is_dir() else None
    replacing = False  # other shards, moved aside once the new ones are complete
    if old is not None and old.get("key") == key:
        if _complete(out, old):
            log.info("shards in %s are up to date; nothing to do", out)
            return ShardInfo(out, old, reused=True, seconds=0.0)
        log.warning("shards in %s are incomplete; preparing them again", out)
    elif old is not None and old.get("version") != VERSION:
        log.warning(
            "shards in %s have format version %s (this triform writes %d); preparing them again",
            out,
            old.get("version"),
            VERSION,
        )
    elif old is not None:
        if not overwrite and old.get("key", {}).get("tokenizer_hash") != key["tokenizer_hash"]:
            raise TriformError(
                f"{out} already holds shards made with a different tokenizer; "
                "use another output folder, or overwrite them (--overwrite)"
            )
        if not overwrite:
            raise TriformError(
                f"{out} already holds shards of a different corpus or options; "
                "use another output folder, or overwrite them (--overwrite)"
            )
        replacing = True
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        start = time.perf_counter()
        meta = _build(
            corpus, validation, tok, tmp, key, val_fraction, workers, seed, progress, chunk_chars
        )
        meta["seconds"] = round(time.perf_counter() - start, 3)
        if replacing:
            names = [META_FILE, "tokenizer.json"]
            names += [f"{split}{suffix}" for split in SPLITS for suffix in _SUFFIXES]
            aside, _ = set_aside(out, names)
            print(f"moved the earlier shards to {aside}")
        (out / META_FILE).unlink(missing_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
        tmp_meta = out / f".{META_FILE}.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_meta, out / META_FILE)  # last: marks the shard set complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ShardInfo(out, meta, reused=False, seconds=meta["seconds"])


def _build(
    corpus: Corpus,
    validation: Corpus | None,
    tok: tokenizers.Tokenizer,
    tmp: Path,
    key: dict[str, Any],
    val_fraction: float,
    workers: int,
    seed: int,
    progress: bool,
    chunk_chars: int,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    writers = {s: _SplitWriter(tmp / f"{s}.bin", dtype) for s in SPLITS}
    rng = np.random.default_rng(seed)
    doc_split: list[bool] = []  # is_val of each document index, drawn in corpus order

    def write(job: list[Item], result: tuple[np.ndarray, ...]) -> None:
        ids, item_tokens, sent_lens, item_sents = result
        docs = np.fromiter((item[0] for item in job), dtype=np.int64, count=len(job))
        first = int(docs[0])  # a job's documents are consecutive
        is_val = np.asarray(doc_split[first : int(docs[-1]) + 1], dtype=bool)[docs - first]
        chars = np.fromiter((len(text) for _, text in job), dtype=np.int64, count=len(job))
        tok_val = np.repeat(is_val, item_tokens)
        sent_val = np.repeat(is_val, item_sents)
        for name, mask, t_mask, s_mask in (
            ("train", ~is_val, ~tok_val, ~sent_val),
            ("val", is_val, tok_val, sent_val),
        ):
            if mask.any():
                w = writers[name]
                w.append(
                    ids[t_mask], docs[mask], item_tokens[mask], item_sents[mask], sent_lens[s_mask]
                )
                w.n_chars += int(chars[mask].sum())

    def documents() -> Iterator[tuple[int, str]]:
        """Every document with its index; its split is drawn (or fixed) as it comes."""
        parts = [(corpus, None)] if validation is None else [(corpus, False), (validation, True)]
        for source, is_val in parts:
            for doc in source.documents():
                doc_split.append(bool(rng.random() < val_fraction) if is_val is None else is_val)
                yield len(doc_split) - 1, doc

    def jobs() -> Iterator[tuple[list[Item], int]]:
        yield from _jobs(documents(), chunk_chars, cuts_are_lossless(tok))

    sizes = [c.total_bytes() for c in (corpus, validation) if c is not None]
    bar = tqdm(
        total=None if None in sizes else sum(sizes),  # type: ignore[arg-type]
        unit="B",
        unit_scale=True,
        desc="tokenizing",
        disable=not progress,
        leave=False,
    )
    try:
        if workers == 0:
            for job, n_chars in jobs():
                write(job, encode_items(tok, job))
                bar.update(n_chars)
        else:
            # fork on Linux: workers start at once (spawn would re-import torch in each).
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(tok.to_str(),)
            ) as pool:
                inflight: deque[tuple[list[Item], int, Future]] = deque()
                for job, n_chars in jobs():
                    inflight.append((job, n_chars, pool.submit(_encode_job, job)))
                    while len(inflight) > 2 * workers:
                        done_job, done_chars, fut = inflight.popleft()
                        write(done_job, fut.result())
                        bar.update(done_chars)
                while inflight:
                    done_job, done_chars, fut = inflight.popleft()
                    write(done_job, fut.result())
                    bar.update(done_chars)
    finally:
        bar.close()

    # Both splits get a document when there are two or more, and train is never empty.
    train, val = writers["train"], writers["val"]
    if validation is None and len(train.index()[0]) == 0 and len(val.index()[0]) > 0:
        _move_last(val, train)
    if val_fraction > 0 and len(val.index()[0]) == 0 and len(train.index()[0]) >= 2:
        _move_last(train, val)
    if train.n_tokens == 0:
        raise TriformError(f"the corpus gave no tokens: {corpus.name}")
    if validation is not None and val.n_tokens == 0:
        raise TriformError(f"the validation corpus gave no tokens: {validation.name}")

    counts = {name: w.finish(tmp, name) for name, w in writers.items()}
    save_tokenizer(tok, tmp / "tokenizer.json")
    return {
        "format": FORMAT,
        "version": VERSION,
        "key": key,
        "tokenizer_hash": key["tokenizer_hash"],
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "separator": "none stored; readers add separators and framing",
        "special_tokens": SpecialTokens.from_tokenizer(tok).to_dict(),
        "corpus": corpus.name,
        "validation": validation.name if validation is not None else None,
        "skipped": [
            {"source": s, "reason": r}
            for c in (corpus, validation)
            if c is not None
            for s, r in c.skipped
        ],
        "splits": counts,
        "workers": workers,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _move_last(src: _SplitWriter, dst: _SplitWriter) -> None:
    ids, doc, lens = src.pop_last_document()
    dst.append(ids, doc, np.array([len(ids)]), np.array([len(lens)]), lens)


# ---------------------------------------------------------------------------------------
# Reading shards back.
# ---------------------------------------------------------------------------------------
class ShardSet:
    """One split of a prepared shard folder, memory-mapped (nothing is read until used).

    ``tokenizer`` (a :class:`tokenizers.Tokenizer` or a path) is checked against the one the
    shards were made with: a different one is refused with a :class:`TriformError`. Without
    it, the shard folder's own ``tokenizer.json`` is used.

    Attributes: ``tokens`` (np.memmap (n_tokens,) uint16/uint32), ``doc_offsets`` (n_docs+1,),
    ``sent_offsets`` (n_sents+1,), ``doc_sent_offsets`` (n_docs+1,), ``meta`` (dict),
    ``tokenizer``, ``special`` (:class:`SpecialTokens`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str = "train",
        tokenizer: tokenizers.Tokenizer | str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        meta = _read_meta(self.path) if self.path.is_dir() else None
        if meta is None:
            raise TriformError(
                f"no shards in {self.path} (no {META_FILE}); run `triform data prepare` first"
            )
        if meta.get("version") != VERSION:
            raise TriformError(
                f"shards in {self.path} have format version {meta.get('version')} (this triform "
                f"reads {VERSION}); prepare them again (`triform data prepare --overwrite`)"
            )
        if split not in meta["splits"]:
            raise TriformError(
                f"no split {split!r} in {self.path}; it has {', '.join(meta['splits'])}"
            )
        if tokenizer is None:
            tokenizer = load_tokenizer(self.path / "tokenizer.json")
        elif not isinstance(tokenizer, tokenizers.Tokenizer):
            tokenizer = load_tokenizer(tokenizer)
        digest = tokenizer_hash(tokenizer)
        if digest != meta["tokenizer_hash"]:
            raise TriformError(
                f"shards in {self.path} were made with a different tokenizer "
                f"(hash {meta['tokenizer_hash'][:12]}, this one {digest[:12]}); "
                "prepare them again with this tokenizer"
            )
        self.meta = meta
        self.split = split
        self.tokenizer = tokenizer
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        counts = meta["splits"][split]
        dtype = np.dtype(meta["dtype"])
        bin_path = self.path / f"{split}.bin"
        if not _complete(self.path, meta):
            raise TriformError(f"shards in {self.path} are incomplete; prepare them again")
        if counts["tokens"] > 0:
            self.tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(counts["tokens"],))
        else:
            self.tokens = np.zeros(0, dtype=dtype)
        self.doc_offsets = np.load(self.path / f"{split}.docs.npy", mmap_mode="r")
        self.sent_offsets = np.load(self.path / f"{split}.sents.npy", mmap_mode="r")
        self.doc_sent_offsets = np.load(self.path / f"{split}.doc_sents.npy", mmap_mode="r")

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def n_sents(self) -> int:
        return len(self.sent_offsets) - 1

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def __len__(self) -> int:
        return self.n_tokens

    def document(self, index: int) -> np.ndarray:
        """The ids of document ``index`` (a view of the memmap)."""
        return self.tokens[self.doc_offsets[index] : self.doc_offsets[index + 1]]

    def sentence(self, index: int) -> np.ndarray:
        """The ids of sentence ``index`` (a view of the memmap)."""
        return self.tokens[self.sent_offsets[index] : self.sent_offsets[index + 1]]

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Text of ``ids`` with the shard's tokenizer."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return (
            f"ShardSet({str(self.path)!r}, split={self.split!r}: {self.n_tokens} tokens, "
            f"{self.n_docs} documents, {self.n_sents} sentences)"
        )
