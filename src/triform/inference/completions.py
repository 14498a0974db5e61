"""Text in, text out: prompts are encoded, batched, continued by :func:`generate` and the new
tokens decoded, cut at stop texts.

>>> model, tok = load_model("runs/default-gpt")
>>> for c in complete(model, tok, ["def ", "class "], max_new_tokens=20, stops=["\\n\\n"]):
...     print(c.prompt, c.rank, c.score, c.text)

Decoders continue the bare prompt (no special tokens; ``text`` includes the prompt, as a
user reads it) and batch prompts left-padded; encoder-decoders read the prompt framed by the
tokenizer as in training and ``text`` is their output alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import tokenizers
import torch

from triform.errors import TriformError
from triform.inference.generate import generate
from triform.models import TransformerModel
from triform.tensors import pad_rows


@dataclass
class Completion:
    """One output: its ``prompt``, the ``text`` (decoders: prompt + continuation),
    ``rank`` (1-based among the outputs of its prompt) and ``score`` (see
    :class:`~triform.inference.generate.GenerateOutput`)."""

    prompt: str
    text: str
    rank: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stop_tokens(
    tokenizer: tokenizers.Tokenizer, stops: Sequence[str], eos_id: int | None
) -> tuple[list[int], list[str]]:
    """Split stop values into token ids (a value that is one vocabulary entry, plus
    ``eos_id``) and texts (anything else, cut from the output where it first appears).
    ``\\n`` and ``\\t`` typed in a value stand for a newline and a tab."""
    ids = [] if eos_id is None else [eos_id]
    texts = []
    for stop in stops:
        stop = stop.replace("\\n", "\n").replace("\\t", "\t")
        if not stop:
            raise TriformError("a stop needs a non-empty token or text")
        token = tokenizer.token_to_id(stop)
        if token is not None:
            ids.append(token)
        else:
            texts.append(stop)
    return ids, texts


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of the stop texts."""
    ends = [text.find(stop) for stop in stops if stop in text]
    return text[: min(ends)] if ends else text


def _pad_id(model: TransformerModel) -> int:
    config = model.config
    return next((t for t in (config.pad_token_id, config.eos_token_id) if t is not None), 0)


def encode_prompts(
    model: TransformerModel, tokenizer: tokenizers.Tokenizer, prompts: Sequence[str]
) -> list[list[int]]:
    """The ids of each prompt: bare for decoders, framed for encoder-decoders; an empty
    prompt is the start (or pad) token."""
    config = model.config
    decoder = config.form == "decoder"
    rows = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=not decoder).ids
        if not ids:
            ids = [config.bos_token_id if config.bos_token_id is not None else _pad_id(model)]
        rows.append(ids)
    return rows


def complete(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    prompts: Sequence[str],
    *,
    stops: Sequence[str] = (),
    batch_size: int = 16,
    num_return_sequences: int = 1,
    seed: int | None = None,
    **options: Any,
) -> list[Completion]:
    """Generate ``num_return_sequences`` outputs for each prompt, ``batch_size`` prompts at a
    time; ``options`` are those of :func:`~triform.inference.generate.generate`
    (``max_new_tokens``, ``do_sample``, ``num_beams``, ``temperature``, ...). Outputs end at
    the model's end token, at ``stops`` that are tokens, and are cut at ``stops`` that are
    text. ``seed`` seeds sampling (one generator for the whole call)."""
    config = model.config
    if config.form == "encoder":
        raise TriformError("an encoder-only model cannot generate")
    if batch_size < 1:
        raise TriformError("batch_size must be positive")
    decoder = config.form == "decoder"
    eos_ids, stop_texts = stop_tokens(tokenizer, stops, config.eos_token_id)
    pad_id = _pad_id(model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    rows = encode_prompts(model, tokenizer, prompts)
    out: list[Completion] = []
    for start in range(0, len(rows), batch_size):
        input_ids, mask = pad_rows(rows[start : start + batch_size], pad_id, left=decoder)
        result = generate(
            model,
            input_ids.to(model.device),
            mask.to(model.device),
            eos_token_id=eos_ids or None,
            num_return_sequences=num_return_sequences,
            pad_token_id=pad_id,
            generator=generator,
            return_scores=True,
            **options,
        )
        new = result.sequences[:, input_ids.shape[1] if decoder else 1 :].cpu()  # (B * R, T)
        for i, (ids, score) in enumerate(zip(new.tolist(), result.scores.tolist(), strict=True)):
            prompt = prompts[start + i // num_return_sequences]
            ends = [k for k, token in enumerate(ids) if token in eos_ids]
            ids = ids[: ends[0]] if ends else ids  # what follows an end is padding
            text = cut_at_stops(tokenizer.decode(ids, skip_special_tokens=True), stop_texts)
            out.append(
                Completion(
                    prompt, prompt + text if decoder else text, i % num_return_sequences + 1, score
                )
            )
    return out
