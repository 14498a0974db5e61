"""In-context learning evaluation: zero-, one- and few-shot prompting of a decoder (or an
encoder-decoder), as in the GPT-3 paper.

A task is a list of examples ``{"input": ..., "answer": ..., "options": [...]}``. Each
example becomes a prompt of ``k`` demonstrations (drawn reproducibly from a pool, never the
example itself) followed by the example, all rendered by one template with ``{input}`` and
``{answer}``::

    Passage: <demo input>\\nGenre: <demo answer>\\n\\nPassage: <input>\\nGenre:

and is scored either by the log-likelihood of each option as the continuation (the sum, or
the mean per token: ``loglik-norm``), picking the best, or by greedy generation compared
with the answer by exact match.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tokenizers
import torch
import torch.nn.functional as F

from triform.errors import TriformError
from triform.inference.generate import generate
from triform.models import EncoderDecoderModel, TransformerModel
from triform.nn.losses import IGNORE_INDEX
from triform.runtime.packed import packed_inference
from triform.tensors import pad_rows
from triform.textio import read_jsonl

Scoring = Literal["loglik", "loglik-norm", "generate"]
DEFAULT_TEMPLATE = "{input}\nAnswer: {answer}"


@dataclass
class Example:
    """One task item: its input text, the gold answer and (for scoring) the options."""

    input: str
    answer: str
    options: list[str] = field(default_factory=list)


def read_examples(path: str | Path, options: Sequence[str] | None = None) -> list[Example]:
    """Read a JSONL task file. Each line needs ``input`` and ``answer`` (a string, or an
    index into ``options``); ``options`` per line or for the whole file."""
    path = Path(path)
    if not path.is_file():
        raise TriformError(f"task file not found: {path}")
    examples = []
    for number, row in read_jsonl(path):
        if "input" not in row or "answer" not in row:
            raise TriformError(f"{path}:{number}: each line needs 'input' and 'answer'")
        row_options = [str(o) for o in row.get("options", options or [])]
        answer = row["answer"]
        if isinstance(answer, int) and not isinstance(answer, bool):
            if not 0 <= answer < len(row_options):
                raise TriformError(f"{path}:{number}: answer index {answer} has no option")
            answer = row_options[answer]
        examples.append(Example(str(row["input"]), str(answer), row_options))
    if not examples:
        raise TriformError(f"{path}: no examples")
    return examples


def build_prompt(
    template: str, demonstrations: Sequence[Example], query: Example, separator: str = "\n\n"
) -> str:
    """The k-shot prompt: solved demonstrations, then the query up to its answer."""
    if "{input}" not in template or not template.rstrip().endswith("{answer}"):
        raise TriformError("the template needs {input} and must end with {answer}")
    shots = [template.format(input=d.input, answer=d.answer) for d in demonstrations]
    head = template[: template.rindex("{answer}")].format(input=query.input)
    return separator.join([*shots, head])


def draw_demonstrations(
    pool: Sequence[Example], k: int, seed: int, index: int, exclude: Example | None = None
) -> list[Example]:
    """``k`` demonstrations for example ``index``, the same ones for the same arguments."""
    candidates = [e for e in pool if e is not exclude]
    if k > len(candidates):
        raise TriformError(f"{k} demonstrations asked for, but the pool has {len(candidates)}")
    return random.Random(seed * 1_000_003 + index).sample(candidates, k)


def _split_space(context: str, continuation: str) -> tuple[str, str]:
    """Move a trailing space of the context onto the continuation, so BPE vocabularies see
    ``" comedy"`` as they saw it in training."""
    if context.endswith(" "):
        return context[:-1], " " + continuation
    return context, continuation


@torch.no_grad()
@packed_inference
def continuation_logprobs(
    model: TransformerModel,
    contexts: Sequence[list[int]],
    continuations: Sequence[list[int]],
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probabilities of each continuation after its context, and its length.

    Decoders read ``context + continuation`` (contexts cut from the left to fit the model's
    positions); encoder-decoders read the context and score the continuation as the target.
    Returns two (N,) tensors.
    """
    device, config = model.device, model.config
    if any(not c for c in continuations):
        raise TriformError("an answer option tokenizes to nothing")
    if isinstance(model, EncoderDecoderModel):
        sources = [c[-config.max_positions :] or [pad_id] for c in contexts]
        start = config.decoder_start_token_id if config.decoder_start_token_id is not None else 0
        decoder_rows = [[start, *c[:-1]] for c in continuations]
        source, source_mask = pad_rows(sources, pad_id)
        decoder_ids, _ = pad_rows(decoder_rows, pad_id)
        logits = model(
            source.to(device), source_mask.to(device), decoder_input_ids=decoder_ids.to(device)
        ).logits  # (N, T, V)
        labels, _ = pad_rows(
            continuations, IGNORE_INDEX
        )  # position t predicts continuation token t
    else:
        rows = []
        for context, continuation in zip(contexts, continuations, strict=True):
            room = config.max_positions - len(continuation)
            if room < 1:
                raise TriformError("an answer option is longer than the model's positions")
            rows.append([*context[len(context) - min(room, len(context)) :], *continuation])
        ids, mask = pad_rows(rows, pad_id)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for i, (row, continuation) in enumerate(zip(rows, continuations, strict=True)):
            labels[i, len(row) - len(continuation) : len(row)] = torch.tensor(continuation)
        logits = model(ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
        labels = labels[:, 1:]  # logits at position t predict token t + 1
    labels = labels.to(device)
    counted = labels != IGNORE_INDEX
    logprobs = F.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, T)
    return (picked * counted).sum(-1).cpu(), counted.sum(-1).cpu()


@dataclass
class ICLResult:
    """Accuracy per number of shots, with the predictions behind it and, per example, a
    record of what was asked and how it was scored: ``prompt``, ``answer``, ``prediction``,
    ``correct`` and ``scores`` (option -> score; ``loglik-norm``: per token) or, for
    ``generate``, the ``generated`` text."""

    accuracy: dict[int, float]
    predictions: dict[int, list[str]]
    scoring: str
    records: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def evaluate_icl(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    examples: Sequence[Example],
    *,
    shots: Sequence[int] = (0, 1, 4, 8),
    pool: Sequence[Example] | None = None,
    template: str = DEFAULT_TEMPLATE,
    separator: str = "\n\n",
    scoring: Scoring = "loglik-norm",
    seed: int = 0,
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> ICLResult:
    """Accuracy of ``model`` on ``examples`` for every k in ``shots``.

    Demonstrations come from ``pool`` (default: the examples themselves, leaving out the one
    being asked). Option scoring needs ``options`` on every example; ``generate`` compares
    the greedy continuation, up to the first newline, with the answer.
    """
    if scoring not in ("loglik", "loglik-norm", "generate"):
        raise TriformError(f"unknown scoring {scoring!r}: loglik, loglik-norm or generate")
    if model.config.form == "encoder":
        raise TriformError("in-context learning needs a decoder or an encoder-decoder model")
    pool = list(pool) if pool is not None else list(examples)
    model.eval()
    accuracy, predictions, records = {}, {}, {}
    for k in shots:
        guesses, rows = [], []
        for index, example in enumerate(examples):
            demos = draw_demonstrations(pool, k, seed, index, exclude=example)
            prompt = build_prompt(template, demos, example, separator)
            row: dict[str, Any] = {"prompt": prompt, "answer": example.answer}
            if scoring == "generate":
                guess = _generate_answer(model, tokenizer, prompt, max_new_tokens)
            else:
                scores = _option_scores(model, tokenizer, prompt, example, scoring, batch_size)
                guess = example.options[max(range(len(scores)), key=scores.__getitem__)]
                row["scores"] = dict(zip(example.options, scores, strict=True))
            row["prediction"] = guess
            row["correct"] = guess.strip() == example.answer.strip()
            guesses.append(guess)
            rows.append(row)
        accuracy[k] = sum(r["correct"] for r in rows) / len(examples)
        predictions[k] = guesses
        records[k] = rows
    return ICLResult(accuracy, predictions, scoring, records)


def _encode(tokenizer: tokenizers.Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def _option_scores(
    model, tokenizer, prompt: str, example: Example, scoring: str, batch_size: int
) -> list[float]:
    """The score of each option as the continuation of ``prompt``: its summed log-probability
    (``loglik``) or that divided by its number of tokens (``loglik-norm``)."""
    if not example.options:
        raise TriformError("option scoring needs 'options' for every example (or --options)")
    contexts, continuations = [], []
    for option in example.options:
        context, continuation = _split_space(prompt, option)
        contexts.append(_encode(tokenizer, context))
        continuations.append(_encode(tokenizer, continuation))
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    scores = []
    for start in range(0, len(contexts), batch_size):
        total, count = continuation_logprobs(
            model,
            contexts[start : start + batch_size],
            continuations[start : start + batch_size],
            pad_id,
        )
        scores.append(total / count if scoring == "loglik-norm" else total)
    return torch.cat(scores).tolist()


def _generate_answer(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    ids = _encode(tokenizer, prompt)
    if model.config.form == "decoder":
        ids = ids[-(model.config.max_positions - max_new_tokens) :]
    input_ids = torch.tensor([ids], device=model.device)
    out = generate(model, input_ids, max_new_tokens=max_new_tokens)
    new = out[0, len(ids) :] if model.config.form == "decoder" else out[0, 1:]
    text = tokenizer.decode(new.tolist(), skip_special_tokens=True)
    return text.strip().split("\n")[0].strip()


def save_result(result: ICLResult, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the accuracies, the predictions and the per-example records (prompts, option
    scores) as JSON."""
    data = {
        "scoring": result.scoring,
        "accuracy": result.accuracy,
        "predictions": result.predictions,
        "examples": result.records,
        **(extra or {}),
    }
    Path(path).write_text(json.dumps(data, indent=2))
