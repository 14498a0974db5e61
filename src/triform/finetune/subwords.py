"""Training texts tokenized afresh every epoch (subword regularization), and the framing
that puts special tokens around token ids produced outside the tokenizer.

- Unigram sampling (Kudo, 2018) and BPE-dropout (Provilkov et al., 2020), seeded: the
  samplers of :mod:`triform.tokenizers.sampling` (``make_sampler``).

Both draw from a ``numpy`` generator seeded by ``(seed, epoch)`` (:func:`epoch_sampler`), so an
epoch's encodings are a function of the run's seed and the epoch: a resumed run re-creates
them exactly. Evaluation and prediction never sample.
"""

from __future__ import annotations

from typing import Any

import tokenizers

from triform.tokenizers.sampling import Sampler, make_sampler


def epoch_sampler(
    tokenizer: tokenizers.Tokenizer, spec: dict[str, Any], seed: int, epoch: int
) -> Sampler:
    """The sampler of ``task.subword_sampling`` for one epoch of a run seeded ``seed``."""
    return make_sampler(tokenizer, spec, (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1))


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut the longer of two token lists, one token at a time, until both fit ``budget``
    (the "longest first" strategy)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget and (a or b):
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return a, b


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
