"""Beam search (and beam sampling), step for step as ``transformers`` does it.

Each input keeps ``num_beams`` running hypotheses and the ``num_beams`` best finished ones.
At every step the candidates are the running hypotheses extended by every token, scored by
their summed log-probabilities; the best ``2 * num_beams`` (more with several stop tokens)
are kept, so that enough of them go on even when the best ones end (beam sampling draws as
many without replacement, in proportion to their probabilities, and ranks them by score).
A candidate ends when it takes a stop token or reaches the maximum length; if it is among
the first ``num_beams`` it then competes for a finished place with its score divided by
``length ** length_penalty`` (length: the new tokens, the stop token included).
``length_penalty`` > 0 favours longer outputs, < 0 shorter ones.

``early_stopping`` decides when an input is done:

- ``True``: as soon as ``num_beams`` hypotheses have finished;
- ``False``: when, in addition, the best running hypothesis scored at the current length
  could not beat the worst finished one (a heuristic);
- ``"never"``: the same test, but with the best length the running hypothesis could still
  reach (the maximum length when ``length_penalty`` > 0): canonical beam search.

Tensors are (B, K, ...) for B inputs and K beams; rows handed to the model are (B * K, ...).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from triform.inference.decoding import Steps
from triform.inference.logits import LogitsProcessing

EarlyStopping = bool | Literal["never"]
_NEG = -1.0e9  # the score of what may not be picked (finite, as transformers keeps it)


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, M, ...) at beam indices (B, K) -> (B, K, ...)."""
    while index.dim() < values.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(values, index, dim=1)


@torch.no_grad()
def beam_search(
    steps: Steps,
    processing: LogitsProcessing,
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    num_return_sequences: int = 1,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run beam search over ``steps`` (rows already repeated ``num_beams`` times).

    Returns the ``num_return_sequences`` best finished hypotheses of every input, best first:
    sequences (B * R, P + new) padded with ``pad_id`` after their end, and their
    length-penalised scores (B * R,).
    """
    flat = steps.sequences  # (B * K, P)
    rows, prompt_len = flat.shape
    beams, batch = num_beams, rows // num_beams
    device = flat.device
    max_len = prompt_len + max_new_tokens
    eos = torch.tensor(processing.eos_ids, dtype=torch.long, device=device)
    keep = max(2, 1 + len(processing.eos_ids)) * beams  # candidates kept per input
    among_best = torch.arange(keep, device=device) < beams  # (keep,): may join the finished

    running = torch.full((batch, beams, max_len), pad_id, dtype=torch.long, device=device)
    running[:, :, :prompt_len] = flat.view(batch, beams, prompt_len)
    counted = torch.ones(batch, beams, max_len, dtype=torch.bool, device=device)
    counted[:, :, :prompt_len] = steps.counted.view(batch, beams, prompt_len)  # the same for
    # every beam of an input, and beams never move to another input: it needs no reordering
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = _NEG  # all beams start equal: only the first one may expand
    done = running.clone()  # the finished hypotheses
    done_scores = torch.full((batch, beams), _NEG, device=device)
    done_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)
    is_done = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)

    logits = steps.first()
    for length in range(prompt_len, max_len):
        new = length - prompt_len  # tokens generated before this step
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (B * K, V)
        log_probs = processing(
            log_probs,
            running[:, :, :length].flatten(0, 1),
            counted[:, :, :length].flatten(0, 1),
            new,
        )
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).flatten(1)
        if processing.do_sample:
            picked = torch.multinomial(totals.softmax(-1), keep, generator=generator)
            # best first, as topk gives them: only the first ``beams`` may finish below
            top_scores, order = totals.gather(1, picked).sort(dim=-1, descending=True)
            picked = picked.gather(1, order)  # (B, keep)
        else:
            top_scores, picked = torch.topk(totals, keep)  # (B, keep)
        parent, token = picked // vocab, picked % vocab  # (B, keep) each
        candidates = _gather(running, parent)  # (B, keep, max_len)
        candidates[:, :, length] = token
        ends = torch.isin(token, eos) | (length + 1 >= max_len)  # (B, keep)

        # the best candidates that go on become the running beams
        open_scores = top_scores + ends.float() * _NEG
        chosen = torch.topk(open_scores, beams).indices  # (B, K)
        running = _gather(candidates, chosen)
        running_scores = _gather(open_scores, chosen)
        parent_rows = _gather(parent, chosen) + torch.arange(batch, device=device)[:, None] * beams

        # the best candidates that end compete with the finished ones
        ended = ends & among_best
        final = top_scores / float(new + 1) ** length_penalty
        full = is_done.all(-1, keepdim=True) & (early_stopping is True)  # (B, 1)
        final = final + full.float() * _NEG  # no more once full (early_stopping=True)
        final = final + (~improvable).float() * _NEG  # nor once nothing better can come
        final = final + (~ended).float() * _NEG  # and only what has ended
        merged = torch.topk(torch.cat([done_scores, final], dim=1), beams).indices
        done = _gather(torch.cat([done, candidates], dim=1), merged)
        done_scores = _gather(torch.cat([done_scores, final], dim=1), merged)
        lengths = torch.full_like(ended, new + 1, dtype=torch.long)
        done_lengths = _gather(torch.cat([done_lengths, lengths], dim=1), merged)
        is_done = _gather(torch.cat([is_done, ended], dim=1), merged)

        improvable = improvable & _may_improve(
            running_scores,
            done_scores,
            is_done,
            new + 1,
            max_new_tokens,
            length_penalty,
            early_stopping,
        )
        all_full = bool(is_done.all()) and early_stopping is True
        if not bool(improvable.any()) or all_full or bool(ends.all()):
            break
        steps.reorder(parent_rows.flatten())
        logits = steps.next(running[:, :, length].flatten())

    returned = num_return_sequences
    sequences = done[:, :returned].flatten(0, 1)  # (B * R, max_len)
    scores = done_scores[:, :returned].flatten()  # (B * R,)
    longest = int(done_lengths[:, :returned].max())
    return sequences[:, : prompt_len + longest], scores


def _may_improve(
    running_scores: torch.Tensor,
    done_scores: torch.Tensor,
    is_done: torch.Tensor,
    generated: int,
    max_new_tokens: int,
    length_penalty: float,
    early_stopping: EarlyStopping,
) -> torch.Tensor:
    """(B, 1): could the best running beam still beat the worst finished hypothesis?"""
    if early_stopping == "never" and length_penalty > 0.0:
        best_length = max_new_tokens  # the longest it could grow
    else:
        best_length = generated
    best_running = running_scores[:, :1] / best_length**length_penalty  # (B, 1)
    worst_done = torch.where(is_done, done_scores.min(dim=1, keepdim=True).values, _NEG)
    return (best_running > worst_done).any(dim=-1, keepdim=True)
