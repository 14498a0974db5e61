"""What happens to next-token scores before a token is chosen: repetition penalty, a minimum
number of new tokens, temperature, top-k and top-p (nucleus) filtering.

The rules and their order are those of ``transformers``' logits processors, so that greedy,
sampled and beam outputs can be compared token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def filter_logits(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_keep: int = 1
) -> torch.Tensor:
    """Keep the ``top_k`` best tokens and the smallest set whose probability reaches
    ``top_p`` (always at least ``min_keep``); the rest get -inf. (N, V) -> (N, V)"""
    if top_k > 0:
        k = min(max(top_k, min_keep), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # a token goes when the better ones before it already reach top_p
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # (N, V), the best is always kept
        drop_sorted[..., :min_keep] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def repetition_penalty_(
    scores: torch.Tensor, sequences: torch.Tensor, counted: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL's repetition penalty, in place: every token already in a row's sequence has its
    score divided by ``penalty`` if positive, multiplied by it if negative.

    scores: (N, V); sequences: (N, T) token ids; counted: (N, T) bool, False on padding.
    """
    vocab = scores.shape[-1]
    ids = sequences.masked_fill(~counted, vocab)  # padding points at an extra column
    seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    seen = seen.scatter_(1, ids, True)[:, :vocab]  # (N, V)
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return scores.copy_(torch.where(seen, penalised, scores))


@dataclass(frozen=True)
class LogitsProcessing:
    """The score rules of one ``generate`` call, applied in ``transformers``' order:
    repetition penalty, no end before ``min_new_tokens``, then (sampling only) temperature,
    top-k and top-p. ``min_keep`` tokens always survive filtering (beam sampling keeps one
    more than the number of stop tokens, so a beam can always go on)."""

    eos_ids: tuple[int, ...] = ()
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_keep: int = 1

    def __call__(
        self,
        scores: torch.Tensor,
        sequences: torch.Tensor,
        counted: torch.Tensor,
        new_tokens: int,
    ) -> torch.Tensor:
        """scores: (N, V) float32 logits or log-probabilities for the next token;
        sequences: (N, T) the tokens so far, ``counted`` (N, T) False on padding;
        ``new_tokens``: how many tokens were generated already. -> (N, V)"""
        if self.repetition_penalty != 1.0:
            scores = repetition_penalty_(scores, sequences, counted, self.repetition_penalty)
        if new_tokens < self.min_new_tokens and self.eos_ids:
            scores[:, list(self.eos_ids)] = float("-inf")
        if self.do_sample:
            if self.temperature != 1.0:
                scores = scores / self.temperature
            scores = filter_logits(scores, self.top_k, self.top_p, self.min_keep)
        return scores


def as_token_ids(value: int | Sequence[int] | None) -> tuple[int, ...]:
    """An int, a list of ints or None as a tuple of token ids."""
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)
