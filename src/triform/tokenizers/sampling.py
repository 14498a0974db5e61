"""Subword regularization (Kudo, 2018) for Unigram tokenizers: sample a different segmentation
of the same text at each encode, for training-time use.

Two engines, one meaning (SentencePiece's ``alpha`` and ``nbest_size``):

- unseeded (``seed=None``): HuggingFace's own sampler in the Unigram model (Rust, fastest), via
  :func:`sampling_tokenizer`. Its random generator cannot be seeded.
- seeded (``seed=int``): the same lattice sampling in numpy with a
  :class:`numpy.random.Generator`, so a run that is resumed or repeated sees the same samples.
  The normalizer and pre-tokenizer of the tokenizer are HuggingFace's; only the per-word
  lattice (pieces and their log-probabilities from the tokenizer's own vocabulary) is sampled
  here.

``nbest_size < 0`` samples from the whole lattice (forward-filtering backward-sampling, each
segmentation with probability proportional to ``P(x) ** alpha``); ``nbest_size > 1`` samples
among the ``nbest_size`` best segmentations of each word; ``0`` or ``1`` means no sampling
(the Viterbi segmentation). Text is not scanned for added/special tokens by the seeded engine.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tokenizers

from triform.errors import ConfigError

_UNK_PENALTY = 10.0  # unknown characters score min_score - 10, as in SentencePiece / HF
_CACHE_WORDS = 100_000


def _unigram_model(tok: tokenizers.Tokenizer) -> dict:
    model = json.loads(tok.to_str())["model"]
    if model.get("type") != "Unigram":
        raise ConfigError(
            f"subword sampling needs a Unigram tokenizer, this one is {model.get('type')}"
        )
    return model


def words_of(tok: tokenizers.Tokenizer, text: str) -> list[str]:
    """``text`` normalized and pre-tokenized by ``tok``'s own pipeline: the words a
    segmentation model (Unigram, BPE) then splits into pieces."""
    if tok.normalizer is not None:
        text = tok.normalizer.normalize_str(text)
    if tok.pre_tokenizer is None:
        return [text] if text else []
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(text) if w]


def _check(alpha: float, nbest_size: int) -> None:
    if not alpha > 0.0:
        raise ConfigError(f"sampling alpha must be > 0, got {alpha}")
    if not isinstance(nbest_size, int):
        raise ConfigError(f"nbest_size must be an integer, got {nbest_size!r}")


def sampling_tokenizer(
    tok: tokenizers.Tokenizer, alpha: float = 0.1, nbest_size: int = -1
) -> tokenizers.Tokenizer:
    """A copy of Unigram tokenizer ``tok`` whose every ``encode`` samples a segmentation
    (HuggingFace's built-in sampler; not seedable). ``tok`` itself is left unchanged."""
    _unigram_model(tok)
    _check(alpha, nbest_size)
    sampler = tokenizers.Tokenizer.from_str(tok.to_str())
    if nbest_size in (0, 1):
        return sampler
    sampler.model.alpha = float(alpha)
    sampler.model.nbest_size = None if nbest_size < 0 else int(nbest_size)
    return sampler


@dataclass(frozen=True)
class _Lattice:
    """All pieces of one word: edge ``k`` covers characters ``starts[k]:ends[k]`` (sorted by
    end); ``by_end[j]:by_end[j+1]`` are the edges that end at character ``j``."""

    starts: np.ndarray  # (E,) int64
    ids: np.ndarray  # (E,) int64
    scores: np.ndarray  # (E,) float64
    by_end: np.ndarray  # (n+2,) int64


class SubwordSampler:
    """Encode text with a freshly sampled Unigram segmentation at every call.

    >>> sampler = SubwordSampler(tok, alpha=0.1, seed=0)
    >>> sampler.encode("unbelievable")  # ids of one sampled segmentation
    """

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        alpha: float = 0.1,
        nbest_size: int = -1,
        seed: int | None = None,
    ) -> None:
        model = _unigram_model(tok)
        _check(alpha, nbest_size)
        self.tok = tok
        self.alpha = float(alpha)
        self.nbest_size = int(nbest_size)
        self.seed = seed
        self._hf = sampling_tokenizer(tok, alpha, nbest_size) if seed is None else None
        self._rng = np.random.default_rng(seed)
        vocab = model["vocab"]
        self._pieces = {piece: (i, float(score)) for i, (piece, score) in enumerate(vocab)}
        self._max_len = max((len(p) for p, _ in vocab), default=1)
        min_score = min((float(s) for _, s in vocab), default=0.0)
        self._unk_score = min_score - _UNK_PENALTY
        self._unk_id = model.get("unk_id")
        self._byte_fallback = bool(model.get("byte_fallback"))
        self._cache: dict[str, _Lattice] = {}
        probe = tok.encode("a", add_special_tokens=True)
        mask = probe.special_tokens_mask
        lead = next((k for k, m in enumerate(mask) if not m), len(mask))
        tail = next((k for k, m in enumerate(reversed(mask)) if not m), 0)
        self._prefix = probe.ids[:lead]
        self._suffix = probe.ids[len(mask) - tail :] if tail else []

    # -- public API ----------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Start the seeded engine's random stream afresh from ``seed``."""
        self._rng = np.random.default_rng(seed)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of one sampled segmentation of ``text`` (framed with the tokenizer's
        special tokens when ``add_special_tokens``)."""
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=add_special_tokens).ids
        ids: list[int] = []
        for word in self._words(text):
            ids.extend(self._sample_word(word))
        if add_special_tokens:
            ids = self._prefix + ids + self._suffix
        return ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """:meth:`encode` for each text."""
        if self._hf is not None:
            encs = self._hf.encode_batch(texts, add_special_tokens=add_special_tokens)
            return [e.ids for e in encs]
        return [self.encode(t, add_special_tokens) for t in texts]

    # -- the seeded engine ---------------------------------------------------------------
    def _words(self, text: str) -> list[str]:
        return words_of(self.tok, text)

    def _lattice(self, word: str) -> _Lattice:
        lat = self._cache.get(word)
        if lat is not None:
            return lat
        n = len(word)
        starts: list[int] = []
        ends: list[int] = []
        ids: list[int] = []
        scores: list[float] = []
        for i in range(n):
            has_char = False
            for length in range(1, min(self._max_len, n - i) + 1):
                hit = self._pieces.get(word[i : i + length])
                if hit is not None:
                    starts.append(i)
                    ends.append(i + length)
                    ids.append(hit[0])
                    scores.append(hit[1])
                    has_char |= length == 1
            if not has_char:
                starts.append(i)
                ends.append(i + 1)
                ids.append(-1 - ord(word[i]))  # unknown character, resolved in _resolve
                scores.append(self._unk_score)
        order = np.argsort(np.asarray(ends), kind="stable")
        ends_sorted = np.asarray(ends, dtype=np.int64)[order]
        lat = _Lattice(
            starts=np.asarray(starts, dtype=np.int64)[order],
            ids=np.asarray(ids, dtype=np.int64)[order],
            scores=np.asarray(scores, dtype=np.float64)[order],
            by_end=np.searchsorted(ends_sorted, np.arange(n + 2), side="left"),
        )
        if len(self._cache) < _CACHE_WORDS:
            self._cache[word] = lat
        return lat

    def _sample_word(self, word: str) -> list[int]:
        lat = self._lattice(word)
        n = len(word)
        if self.nbest_size in (0, 1):
            path = self._nbest(lat, n, 1)[0][1]
        elif self.nbest_size > 1:
            paths = self._nbest(lat, n, self.nbest_size)
            logits = self.alpha * np.array([score for score, _ in paths])
            probs = np.exp(logits - logits.max())
            path = paths[self._rng.choice(len(paths), p=probs / probs.sum())][1]
        else:
            path = self._ffbs(lat, n)
        return self._resolve([int(lat.ids[k]) for k in path])

    def _ffbs(self, lat: _Lattice, n: int) -> list[int]:
        """Forward-filtering backward-sampling over the whole lattice; edge indices in order."""
        weighted = self.alpha * lat.scores  # (E,)
        log_alpha = np.full(n + 1, -np.inf)
        log_alpha[0] = 0.0
        for j in range(1, n + 1):
            lo, hi = lat.by_end[j], lat.by_end[j + 1]
            log_alpha[j] = np.logaddexp.reduce(log_alpha[lat.starts[lo:hi]] + weighted[lo:hi])
        path: list[int] = []
        j = n
        while j > 0:
            lo, hi = lat.by_end[j], lat.by_end[j + 1]
            logp = log_alpha[lat.starts[lo:hi]] + weighted[lo:hi] - log_alpha[j]
            p = np.exp(logp - logp.max())
            k = lo + int(self._rng.choice(hi - lo, p=p / p.sum()))
            path.append(k)
            j = int(lat.starts[k])
        return path[::-1]

    @staticmethod
    def _nbest(lat: _Lattice, n: int, k: int) -> list[tuple[float, list[int]]]:
        """The ``k`` best segmentations (score, edge indices), best first (k-best Viterbi)."""
        # best[j]: up to k entries (score, edge, rank of the entry at the edge's start)
        best: list[list[tuple[float, int, int]]] = [[(0.0, -1, -1)]] + [[] for _ in range(n)]
        for j in range(1, n + 1):
            cands = []
            for e in range(lat.by_end[j], lat.by_end[j + 1]):
                s = int(lat.starts[e])
                for r, (score, _, _) in enumerate(best[s]):
                    cands.append((score + float(lat.scores[e]), e, r))
            best[j] = heapq.nlargest(k, cands, key=lambda c: c[0])
        out = []
        for rank in range(len(best[n])):
            path, j, r = [], n, rank
            score = best[n][rank][0]
            while j > 0:
                _, e, r = best[j][r]
                path.append(e)
                j = int(lat.starts[e])
            out.append((score, path[::-1]))
        return out

    def _resolve(self, ids: list[int]) -> list[int]:
        """Turn unknown-character markers into the unk id (consecutive ones fused) or, with
        byte fallback, into the ``<0xNN>`` byte pieces."""
        out: list[int] = []
        for i in ids:
            if i >= 0:
                out.append(i)
                continue
            char = chr(-1 - i)
            if self._byte_fallback:
                byte_ids = [self._pieces.get(f"<0x{b:02X}>") for b in char.encode("utf-8")]
                if all(b is not None for b in byte_ids):
                    out.extend(b[0] for b in byte_ids)  # type: ignore[index]
                    continue
            if self._unk_id is None:
                raise ConfigError(f"character {char!r} is not in the vocabulary (no unk token)")
            if not out or out[-1] != self._unk_id:
                out.append(self._unk_id)
        return out


def encode_with_sampling(
    tok: tokenizers.Tokenizer,
    text: str,
    alpha: float = 0.1,
    nbest: int = -1,
    seed: int | None = None,
    add_special_tokens: bool = True,
) -> list[int]:
    """One sampled segmentation of ``text`` (see :class:`SubwordSampler`). With ``seed`` the
    result is a deterministic function of ``(text, seed)``; without, HF's sampler is used.
    For many texts build one :class:`SubwordSampler` instead (it caches word lattices)."""
    return SubwordSampler(tok, alpha=alpha, nbest_size=nbest, seed=seed).encode(
        text, add_special_tokens=add_special_tokens
    )


class Sampler(Protocol):
    """A seeded subword sampler: :class:`SubwordSampler` or :class:`BPEDropout`."""

    def encode_batch(
        self, texts: list[str], add_special_tokens: bool = True
    ) -> list[list[int]]: ...

    def reseed(self, seed: int) -> None: ...


class BPEDropout:
    """Encode text with a BPE tokenizer's merges, each candidate merge dropped with
    probability ``dropout`` at every step (seeded). ``dropout = 0`` gives the tokenizer's
    own segmentation. Special tokens written in the text are not recognised."""

    def __init__(self, tok: tokenizers.Tokenizer, dropout: float, seed: int) -> None:
        model = json.loads(tok.to_str())["model"]
        if model.get("type") != "BPE":
            raise ConfigError(f"BPE-dropout needs a BPE tokenizer, this one is {model.get('type')}")
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise ConfigError("BPE-dropout: tokenizers with subword prefixes are not supported")
        self.tok = tok
        self.dropout = float(dropout)
        self.rng = np.random.default_rng(seed)
        self.vocab: dict[str, int] = model["vocab"]
        merges = [
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]
        ]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.unk = self.vocab.get(model["unk_token"]) if model.get("unk_token") else None

    def _words(self, text: str) -> list[str]:
        return words_of(self.tok, text)

    def _word(self, word: str) -> list[int]:
        symbols = list(word)
        while len(symbols) > 1:
            candidates = [
                (self.ranks[pair], i)
                for i, pair in enumerate(zip(symbols, symbols[1:], strict=False))
                if pair in self.ranks
            ]
            if self.dropout > 0:
                keep = self.rng.random(len(candidates)) >= self.dropout
                candidates = [c for c, k in zip(candidates, keep, strict=True) if k]
            if not candidates:
                break
            _, i = min(candidates)
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        ids: list[int] = []
        for symbol in symbols:
            if symbol in self.vocab:
                ids.append(self.vocab[symbol])
            elif self.unk is None:
                raise ConfigError(f"BPE-dropout: {symbol!r} is not in the vocabulary")
            elif not ids or ids[-1] != self.unk:
                ids.append(self.unk)
        return ids

    def reseed(self, seed: int) -> None:
        """Start the random stream afresh from ``seed``."""
        self.rng = np.random.default_rng(seed)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        """The ids of each text, without special tokens (see
        :class:`triform.finetune.subwords.Framing` to frame them)."""
        if add_special_tokens:
            raise ValueError("BPEDropout encodes without special tokens")
        return [[i for word in self._words(t) for i in self._word(word)] for t in texts]


SAMPLING_KEYS = {"alpha", "nbest_size", "dropout"}


def check_sampling_spec(spec: Any, setting: str) -> None:
    """Validate a subword-sampling table (``{alpha, nbest_size}`` for Unigram sampling or
    ``{dropout}`` for BPE-dropout); errors name ``setting`` (e.g. ``task.subword_sampling``)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{setting} must be a table, e.g. {{alpha = 0.1}} or {{dropout = 0.1}}")
    unknown = sorted(set(spec) - SAMPLING_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key {setting}.{unknown[0]}; expected alpha and nbest_size "
            "(Unigram sampling) or dropout (BPE-dropout)"
        )
    if "dropout" in spec and ({"alpha", "nbest_size"} & set(spec)):
        raise ConfigError(f"{setting}: give alpha (Unigram) or dropout (BPE), not both")
    if not spec:
        raise ConfigError(f"{setting} needs alpha (Unigram) or dropout (BPE)")
    for key, value in spec.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (key == "nbest_size" and not isinstance(value, int)):
            kind = "an integer" if key == "nbest_size" else "a number"
            raise ConfigError(f"{setting}.{key} must be {kind}, got {value!r}")
    if "dropout" in spec and not 0 < spec["dropout"] < 1:
        raise ConfigError(f"{setting}.dropout must be in (0, 1), got {spec['dropout']}")
    if "alpha" in spec and not spec["alpha"] > 0:
        raise ConfigError(f"{setting}.alpha must be > 0, got {spec['alpha']}")


def make_sampler(tokenizer: tokenizers.Tokenizer, spec: dict[str, Any], seed: int) -> Sampler:
    """The seeded sampler a subword-sampling table asks for: BPE-dropout with ``dropout``,
    else Unigram sampling (``alpha``, ``nbest_size``)."""
    if "dropout" in spec:
        return BPEDropout(tokenizer, spec["dropout"], seed)
    return SubwordSampler(
        tokenizer, alpha=spec.get("alpha", 0.1), nbest_size=spec.get("nbest_size", -1), seed=seed
    )
