"""Train a tokenizer of one of five kinds from a corpus, with a model family's special tokens.

Every kind is a HuggingFace ``tokenizers`` pipeline (normalizer -> pre-tokenizer -> model ->
post-processor -> decoder); the algorithms run in Rust, nothing is re-implemented here.

- ``bpe``: character-level BPE with a SentencePiece-style word marker (``▁``): lossless for
  text whose characters were seen in training, unknown characters become the unk token.
- ``byte-bpe``: GPT-2's byte-level BPE: 256 byte symbols, never an unknown token.
- ``wordpiece``: BERT's WordPiece: BERT normalizer (lower-casing optional), split on
  whitespace and punctuation, ``##`` marks a word's continuation pieces.
- ``unigram``: SentencePiece's Unigram LM (NFKC, ``▁`` word marker); supports subword
  regularization (see :mod:`triform.tokenizers.sampling`).
- ``char``: one token per character (the ``vocab_size`` most frequent ones), for small
  experiments; newlines are kept.

For the Metaspace kinds (``bpe``, ``unigram``) a newline is read as a space, as in
SentencePiece, so a word at the start of a line is the same token as elsewhere.

BPE and byte-level BPE training is deterministic; HuggingFace's WordPiece and Unigram trainers
break ties in hash order, so two trainings may differ in a few tokens. Save the tokenizer
(a ``tokenizer.json``) and reuse it: that is what makes a run reproducible.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Literal

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from triform.errors import ConfigError, TriformError
from triform.tokenizers.specials import FamilySpec, build_post_processor, family_spec

Kind = Literal["bpe", "byte-bpe", "wordpiece", "unigram", "char"]
KINDS: tuple[str, ...] = ("bpe", "byte-bpe", "wordpiece", "unigram", "char")

# The family a kind gets when none is named: the model that made the kind famous.
DEFAULT_FAMILY: dict[str, str] = {
    "bpe": "roberta",
    "byte-bpe": "gpt2",
    "wordpiece": "bert",
    "unigram": "t5",
    "char": "gpt2",
}

_BATCH = 256  # texts per batch handed to the Rust trainer


def _metaspace_normalizer(lowercase: bool, nfkc: bool) -> normalizers.Normalizer:
    steps: list[normalizers.Normalizer] = [normalizers.NFKC()] if nfkc else []
    steps.append(normalizers.Replace("\n", " "))
    if lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps)


def _build(
    kind: str, unk: str | None, lowercase: bool
) -> tuple[tokenizers.Tokenizer, type[trainers.Trainer], dict]:
    """An untrained pipeline for ``kind``, the trainer class and its kind-specific options."""
    if kind == "bpe":
        tok = tokenizers.Tokenizer(models.BPE(unk_token=unk, fuse_unk=True))
        tok.normalizer = _metaspace_normalizer(lowercase, nfkc=False)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        return tok, trainers.BpeTrainer, {"limit_alphabet": 1000}
    if kind == "byte-bpe":
        tok = tokenizers.Tokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok, trainers.BpeTrainer, {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()}
    if kind == "wordpiece":
        tok = tokenizers.Tokenizer(models.WordPiece(unk_token=unk, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        return (
            tok,
            trainers.WordPieceTrainer,
            {
                "continuing_subword_prefix": "##",
                "limit_alphabet": 1000,
            },
        )
    if kind == "unigram":
        tok = tokenizers.Tokenizer(models.Unigram())
        tok.normalizer = _metaspace_normalizer(lowercase, nfkc=True)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        return tok, trainers.UnigramTrainer, {"unk_token": unk, "max_piece_length": 16}
    if kind == "char":
        tok = tokenizers.Tokenizer(models.BPE(unk_token=unk, fuse_unk=False))
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.decoder = decoders.Fuse()
        return tok, trainers.BpeTrainer, {}
    raise ConfigError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")


def _as_text(item: object) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, (list, tuple)) and all(isinstance(x, str) for x in item):
        return "\n".join(item)
    raise ConfigError(
        f"tokenizer training texts must be strings or lists of strings, got {item!r:.60}"
    )


def _text_batches(corpus: object) -> Iterator[list[str]]:
    """Batches of texts from a corpus (anything with a ``texts()`` method, such as
    :class:`triform.data.Corpus`) or an iterable of texts (a text is a string, or a list of
    strings taken as the lines of one document). Reading files is the corpus's job: a path
    is refused with the one line that says so."""
    if isinstance(corpus, (str, os.PathLike)) or (
        isinstance(corpus, Sequence) and corpus and isinstance(corpus[0], os.PathLike)
    ):
        raise ConfigError(
            f"train_tokenizer reads texts, not paths: pass "
            f"triform.data.Corpus.from_paths({str(corpus)!r:.60}) (or the texts)"
        )
    texts = corpus.texts() if hasattr(corpus, "texts") else corpus
    it = iter(texts)  # type: ignore[call-overload]
    while batch := [_as_text(t) for t in itertools.islice(it, _BATCH)]:
        yield batch


def train_tokenizer(
    corpus: object,
    kind: Kind | str = "byte-bpe",
    vocab_size: int = 8000,
    family: str | None = None,
    *,
    lowercase: bool | None = None,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> tokenizers.Tokenizer:
    """Train a ``kind`` tokenizer of (at most) ``vocab_size`` tokens on ``corpus``.

    ``corpus`` is a :class:`triform.data.Corpus` (``Corpus.from_paths("books/")`` reads
    files, folders and globs), or any iterable of texts (strings, or lists of lines).
    ``family`` picks the special tokens and post-processing (see
    :mod:`triform.tokenizers.specials`); it defaults to the kind's classic family
    (byte-bpe: gpt2, wordpiece: bert, unigram: t5, bpe: roberta, char: gpt2).
    ``vocab_size`` counts every token, special ones included (T5's 100 sentinels too); for
    ``char`` it caps the alphabet. ``lowercase`` defaults to True for WordPiece (BERT uncased)
    and False otherwise. Returns a HuggingFace :class:`tokenizers.Tokenizer`.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    spec: FamilySpec = family_spec(family or DEFAULT_FAMILY[kind])
    lowercase = (kind == "wordpiece") if lowercase is None else lowercase
    unk = spec.unk if spec.unk is not None else ("<unk>" if kind != "byte-bpe" else None)
    specials = list(spec.tokens) + ([unk] if unk is not None and unk not in spec.tokens else [])
    model_vocab = vocab_size - spec.num_sentinels
    floor = len(specials) + (256 if kind == "byte-bpe" else 1)
    if model_vocab < floor:
        raise ConfigError(
            f"vocab_size {vocab_size} is too small for a {kind} tokenizer of family "
            f"{spec.name} (needs at least {floor + spec.num_sentinels})"
        )
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1, got {min_frequency}")

    tok, trainer_cls, options = _build(kind, unk, lowercase)
    if kind == "char":
        # No merges: the trainer keeps the most frequent characters as the whole vocabulary.
        options = {"limit_alphabet": model_vocab - len(specials)}
        model_vocab = 0
    elif kind != "unigram":  # the Unigram trainer prunes by likelihood, not by frequency
        options["min_frequency"] = min_frequency
    trainer = trainer_cls(
        vocab_size=model_vocab, special_tokens=specials, show_progress=show_progress, **options
    )
    batches = _text_batches(corpus)
    first = next(batches, None)
    if not first:
        raise TriformError("cannot train a tokenizer on an empty corpus")
    tok.train_from_iterator(itertools.chain([first], batches), trainer=trainer)
    if spec.num_sentinels:
        tok.add_special_tokens(spec.sentinel_tokens())
    processor = build_post_processor(
        spec, tok.get_vocab(with_added_tokens=True), byte_level=kind == "byte-bpe"
    )
    if processor is not None:
        tok.post_processor = processor
    return tok
