"""Text generation with the KV cache for decoders and encoder-decoders: greedy decoding,
sampling (temperature, top-k, top-p), beam search (and beam sampling), stop tokens, a
minimum and a maximum number of new tokens, a repetition penalty, and batches of prompts of
different lengths.

Greedy and beam outputs are token for token those of ``transformers``' ``generate`` for the
same weights, and laid out the same way: prompt + new tokens for decoders (prompts
left-padded), the decoder sequence from its start token for encoder-decoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from triform.errors import TriformError
from triform.inference.beam_search import EarlyStopping, beam_search
from triform.inference.decoding import Steps, start_steps
from triform.inference.logits import LogitsProcessing, as_token_ids, filter_logits
from triform.models import TransformerModel
from triform.runtime.packed import packed_linears

__all__ = ["GenerateOutput", "filter_logits", "generate"]


@dataclass
class GenerateOutput:
    """``sequences``: (B * R, T) token ids, R = ``num_return_sequences`` rows per input (best
    first with beams). ``scores``: (B * R,) with beams, the length-penalised sum of the new
    tokens' log-probabilities (``transformers``' ``sequences_scores``); otherwise the plain
    sum of the log-probabilities each new token had where it was chosen."""

    sequences: torch.Tensor
    scores: torch.Tensor


@torch.no_grad()
def generate(
    model: TransformerModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    length_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    *,
    early_stopping: EarlyStopping = False,
    num_return_sequences: int = 1,
    min_new_tokens: int = 0,
    repetition_penalty: float = 1.0,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    return_scores: bool = False,
) -> torch.Tensor | GenerateOutput:
    """Continue ``input_ids`` (B, L) by up to ``max_new_tokens`` tokens.

    Decoders: prompts are left-padded (``attention_mask`` 0 on the padding) and each row of
    the result is prompt + new tokens. Encoder-decoders: ``input_ids`` is the source (any
    padding) and each row is the decoder sequence, starting with the start token.

    ``num_beams`` > 1 runs beam search (:mod:`triform.inference.beam_search` explains
    ``length_penalty`` and ``early_stopping``); with ``do_sample`` it samples the beams.
    ``do_sample`` alone samples from the scores after ``temperature``, ``top_k`` (0: off)
    and ``top_p`` (1.0: off), from ``generator`` (default: torch's global generator).
    A row ends at any of ``eos_token_id`` (default: the model's) and is then filled with
    ``pad_token_id`` (default: the model's, else the first stop token). ``min_new_tokens``
    keeps stop tokens out until that many new tokens exist; ``repetition_penalty`` > 1
    discourages tokens already in the sequence (CTRL).

    Returns a (B * R, T) tensor, R = ``num_return_sequences``, or a :class:`GenerateOutput`
    with scores as well when ``return_scores`` is set.
    """
    _check(input_ids, max_new_tokens, num_beams, do_sample, num_return_sequences)
    _check_numbers(temperature, top_k, top_p, repetition_penalty, early_stopping)
    early_stopping = early_stopping if early_stopping == "never" else bool(early_stopping)
    config = model.config
    eos_ids = as_token_ids(eos_token_id if eos_token_id is not None else config.eos_token_id)
    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    processing = LogitsProcessing(
        eos_ids=eos_ids,
        min_new_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_keep=1 + max(len(eos_ids), 1) if num_beams > 1 else 1,
    )
    expand = num_beams if num_beams > 1 else num_return_sequences
    was_training = model.training
    model.eval()
    try:
        # every step reads every weight: oneDNN's kernel streams them twice as fast on a CPU
        with packed_linears(model, reorder_fp32=input_ids.shape[0] * expand > 1):
            steps = start_steps(model, input_ids, attention_mask, expand, max_new_tokens, pad)
            if num_beams > 1:
                sequences, scores = beam_search(
                    steps,
                    processing,
                    num_beams=num_beams,
                    max_new_tokens=max_new_tokens,
                    length_penalty=length_penalty,
                    early_stopping=early_stopping,
                    num_return_sequences=num_return_sequences,
                    pad_id=pad,
                    generator=generator,
                )
            else:
                sequences, scores = _decode(steps, processing, max_new_tokens, pad, generator)
    finally:
        model.train(was_training)
    return GenerateOutput(sequences, scores) if return_scores else sequences


def _decode(
    steps: Steps,
    processing: LogitsProcessing,
    max_new_tokens: int,
    pad_id: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding or sampling, one token per row a step, until every row has ended or
    ``max_new_tokens`` are there. -> sequences (N, P + new), summed log-probabilities (N,)"""
    sequences, counted = steps.sequences, steps.counted  # (N, P)
    rows = sequences.shape[0]
    running = torch.ones(rows, dtype=torch.bool, device=sequences.device)
    total = torch.zeros(rows, device=sequences.device)
    eos = torch.tensor(processing.eos_ids, dtype=torch.long, device=sequences.device)
    logits = steps.first()
    for new in range(max_new_tokens):
        scores = processing(logits.float(), sequences, counted, new)  # (N, V)
        if processing.do_sample:
            token = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(-1)
        else:
            token = scores.argmax(-1)  # (N,)
        chosen = F.log_softmax(scores, -1).gather(-1, token[:, None]).squeeze(-1)
        total += torch.where(running, chosen, torch.zeros_like(chosen))
        if eos.numel():
            token = torch.where(running, token, torch.full_like(token, pad_id))
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        counted = torch.cat([counted, torch.ones_like(counted[:, :1])], dim=1)
        running &= ~torch.isin(token, eos)
        if not bool(running.any()) or new == max_new_tokens - 1:
            break
        logits = steps.next(token)
    return sequences, total


def _check(
    input_ids: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    do_sample: bool,
    num_return_sequences: int,
) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise TriformError(
            f"input_ids must be (batch, length) and non-empty, not {input_ids.shape}"
        )
    if max_new_tokens < 1:
        raise TriformError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    if num_beams < 1 or num_return_sequences < 1:
        raise TriformError("num_beams and num_return_sequences must be at least 1")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise TriformError(
            f"num_return_sequences={num_return_sequences} is more than num_beams={num_beams}"
        )
    if num_beams == 1 and not do_sample and num_return_sequences > 1:
        raise TriformError("greedy decoding gives one sequence: use beams or do_sample")


def _check_numbers(
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    early_stopping: EarlyStopping,
) -> None:
    if not temperature > 0:
        raise TriformError(f"temperature must be positive, not {temperature}")
    if top_k < 0 or not 0 < top_p <= 1:
        raise TriformError(f"need top_k >= 0 and 0 < top_p <= 1, not {top_k} and {top_p}")
    if not repetition_penalty > 0:
        raise TriformError(f"repetition_penalty must be positive, not {repetition_penalty}")
    if early_stopping not in (True, False, "never"):
        raise TriformError(f"early_stopping must be True, False or 'never', not {early_stopping!r}")
