"""Training texts tokenized afresh every epoch (subword regularization), and the framing
that puts special tokens around token ids produced outside the tokenizer.

- Unigram sampling (Kudo, 2018): :class:`~triform.tokenizers.SubwordSampler`, seeded;
- BPE-dropout (Provilkov et al., 2020): :class:`BPEDropout`, which applies a BPE tokenizer's
  merges in rank order while dropping each candidate merge with probability ``dropout``.

Both draw from a ``numpy`` generator seeded by ``(seed, epoch)`` (:func:`epoch_sampler`), so an
epoch's encodings are a function of the run's seed and the epoch: a resumed run re-creates
them exactly. Evaluation and prediction never sample.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np
import tokenizers

from triform.errors import ConfigError
from triform.tokenizers import SubwordSampler


class Sampler(Protocol):
    def encode_batch(
        self, texts: list[str], add_special_tokens: bool = True
    ) -> list[list[int]]: ...


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
        if self.tok.normalizer is not None:
            text = self.tok.normalizer.normalize_str(text)
        if self.tok.pre_tokenizer is None:
            return [text] if text else []
        return [w for w, _ in self.tok.pre_tokenizer.pre_tokenize_str(text) if w]

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

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        """The ids of each text (without special tokens: frame them with :class:`Framing`)."""
        if add_special_tokens:
            raise ValueError("BPEDropout encodes without special tokens")
        return [[i for word in self._words(t) for i in self._word(word)] for t in texts]


def epoch_sampler(
    tokenizer: tokenizers.Tokenizer, spec: dict[str, Any], seed: int, epoch: int
) -> Sampler:
    """The sampler of ``task.subword_sampling`` for one epoch of a run seeded ``seed``."""
    stream = (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)
    if "dropout" in spec:
        return BPEDropout(tokenizer, spec["dropout"], stream)
    return SubwordSampler(
        tokenizer, alpha=spec.get("alpha", 0.1), nbest_size=spec.get("nbest_size", -1), seed=stream
    )


class Framing:
    """The special tokens a tokenizer puts around one text or a pair, learned from probe
    encodings, so that ids produced elsewhere (a sampler) are framed as
    ``tokenizer.encode`` would frame them.

    >>> Framing(bert_tokenizer).frame([7, 8], [9], max_length=16)
    ([2, 7, 8, 3, 9, 3], [0, 0, 0, 0, 1, 1])
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        copy = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        copy.no_truncation()
        copy.no_padding()
        self.single = self._template(copy.encode("a"))
        self.pair = self._template(copy.encode("a", "b"))

    @staticmethod
    def _template(encoding: tokenizers.Encoding) -> list[tuple[int, int]]:
        """(special token id, or -1 - the text's index; type id) slots, in order."""
        slots: list[tuple[int, int]] = []
        for token, sequence, type_id in zip(
            encoding.ids, encoding.sequence_ids, encoding.type_ids, strict=True
        ):
            if sequence is None:
                slots.append((token, type_id))
            elif not slots or slots[-1][0] != -1 - sequence:
                slots.append((-1 - sequence, type_id))
        return slots

    def specials(self, pair: bool) -> int:
        """How many special tokens frame one text (``pair=False``) or a pair."""
        return sum(1 for slot in (self.pair if pair else self.single) if slot[0] >= 0)

    def frame(
        self, a: list[int], b: list[int] | None = None, max_length: int | None = None
    ) -> tuple[list[int], list[int]]:
        """Token ids and type ids of ``a`` (and ``b``), cut longest-first to fit
        ``max_length`` with the special tokens."""
        ids, types, _ = self.frame_positions(a, b, max_length)
        return ids, types

    def frame_positions(
        self, a: list[int], b: list[int] | None = None, max_length: int | None = None
    ) -> tuple[list[int], list[int], list[int | None]]:
        """:meth:`frame`, and for every token its index in its text (None: special)."""
        from triform.finetune.tasks.base import truncate_pair

        template = self.single if b is None else self.pair
        if max_length is not None:
            budget = max(max_length - self.specials(b is not None), 0)
            if b is None:
                a = a[:budget]
            else:
                a, b = truncate_pair(a, b, budget)
        texts = [a, b or []]
        ids: list[int] = []
        types: list[int] = []
        positions: list[int | None] = []
        for token, type_id in template:
            chunk = [token] if token >= 0 else texts[-1 - token]
            ids.extend(chunk)
            types.extend([type_id] * len(chunk))
            positions.extend([None] if token >= 0 else range(len(chunk)))
        return ids, types, positions
