"""Perplexity of a model on text, for each form:

- **decoders**: the sliding window of the ``transformers`` perplexity guide. The text's
  tokens are read in windows of ``max_length`` tokens that start every ``stride`` tokens;
  each window scores only the tokens the previous window did not reach, with everything
  before them in the window as context, so every token after the first is scored once with
  at least ``max_length - stride`` tokens of context (where the text has them).
  ``stride = max_length`` gives disjoint windows (whose first tokens go unscored). The guide
  weights each window's mean loss by its label count minus one, one token too few for the
  windows after the first; here every scored token counts once.
- **encoder-decoders**: the likelihood of each target given its source (pairs of a TSV or of
  a JSONL with ``source`` and ``target``), framed as in ``seq2seq`` training.
- **encoders with a masked-LM head**: pseudo-perplexity (Salazar et al., 2020, "Masked
  Language Model Scoring"): every token is masked once, with the rest of its window as
  context, and scored by the model's probability of the original token. The masked copies
  are batched, ``batch_size`` of them (from one window or several) per forward.

Every text is one token stream (no special tokens for decoders; its first token has no
context and is not scored). Results sum over all texts: ``tokens`` scored, total ``nll`` in
nats, ``perplexity = exp(nll / tokens)``; decoders also give bits per byte and per character
of the text, which compare across tokenizers.

Every window is scored unless ``windows`` asks for fewer: then that many, spread evenly
across all of them (:func:`triform.data.readers.evaluation_samples`, the rule of every
evaluation, a pretraining run's validation loss included). A window is a decoder's sliding
window, an encoder's chunk or an encoder-decoder's pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
import torch
import torch.nn.functional as F

from triform.data.readers import evaluation_samples
from triform.errors import TriformError
from triform.models import TransformerModel
from triform.nn.losses import IGNORE_INDEX
from triform.objectives import ParallelCorpus, read_pairs, shift_right
from triform.runtime.packed import packed_inference
from triform.tensors import pad_rows
from triform.textio import read_jsonl, read_text
from triform.tokenizers import SpecialTokens

METHODS = {
    "decoder": "sliding-window",
    "encoder-decoder": "seq2seq",
    "encoder": "pseudo-perplexity",
}
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class Perplexity:
    """Scored ``tokens``, their total negative log-likelihood ``nll`` (nats), the size of the
    text (characters and UTF-8 bytes; for seq2seq, of the targets scored) and the windows
    scored of all the text's windows."""

    method: str
    tokens: int
    nll: float
    chars: int
    bytes: int
    texts: int
    max_length: int | None = None
    stride: int | None = None
    files: list[str] = field(default_factory=list)
    windows: int | None = None  # scored, spread evenly across
    total_windows: int | None = None  # all of the text's

    @property
    def whole(self) -> bool:
        """Whether every window of the text was scored."""
        return self.windows == self.total_windows

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per scored token (nats)."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def bits_per_byte(self) -> float | None:
        """Total NLL in bits per UTF-8 byte of the text (decoders, every window scored)."""
        if self.method != METHODS["decoder"] or not self.bytes or not self.whole:
            return None
        return self.nll / math.log(2) / self.bytes

    @property
    def bits_per_char(self) -> float | None:
        """Total NLL in bits per character of the text (decoders, every window scored)."""
        if self.method != METHODS["decoder"] or not self.chars or not self.whole:
            return None
        return self.nll / math.log(2) / self.chars

    def to_dict(self) -> dict[str, Any]:
        """Every field and derived figure, as plain data (the ``--json`` output)."""
        return {
            **asdict(self),
            "mean_nll": self.mean_nll,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "bits_per_char": self.bits_per_char,
        }


def _pad_id(model: TransformerModel) -> int:
    """The id that fills padding (never scored, masked from attention): the model's pad or
    end token where it lies in the vocabulary, else 0."""
    config = model.config
    found = (config.pad_token_id, config.eos_token_id)
    return next((t for t in found if t is not None and 0 <= t < config.vocab_size), 0)


def _check_length(model: TransformerModel, max_length: int | None) -> int:
    limit = model.config.max_positions
    max_length = limit if max_length is None else max_length
    if not 2 <= max_length <= limit:
        raise TriformError(f"max_length must be in [2, {limit}] (the model's positions)")
    return max_length


def _spread(total: int, windows: int | None) -> list[int]:
    """The windows scored of ``total``: all, or ``windows`` spread evenly across them."""
    if windows is not None and windows < 1:
        raise TriformError(f"windows must be positive, got {windows}")
    return evaluation_samples(total, windows).tolist()


def _finish(method: str, tokens: int, nll: float, texts: Sequence[str], **extra: Any) -> Perplexity:
    if tokens == 0:
        raise TriformError("nothing to score: the text is shorter than two tokens")
    chars = sum(len(t) for t in texts)
    size = sum(len(t.encode("utf-8")) for t in texts)
    return Perplexity(method, tokens, nll, chars, size, len(texts), **extra)


def _batches(total: int, batch_size: int, progress: bool, unit: str) -> Iterator[int]:
    """The start of each batch of ``total`` items, with a progress bar when asked."""
    from tqdm.auto import tqdm

    with tqdm(total=total, unit=f" {unit}", disable=not progress, leave=False) as bar:
        for start in range(0, total, batch_size):
            yield start
            bar.update(min(batch_size, total - start))


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over ``n_tokens`` tokens: ``(begin, end, first scored token)`` each, with
    global token indices. Each window scores the tokens the previous one did not reach, but
    never its own first token (nothing before it to predict it from): with ``stride <
    max_length`` every token but the text's first is scored once; with ``stride ==
    max_length`` (disjoint windows, as in the guide) the first token of every window is
    left out."""
    if not 1 <= stride <= max_length:
        raise TriformError(f"stride must be in [1, max_length = {max_length}], got {stride}")
    windows = []
    scored_up_to = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        first = max(scored_up_to, begin + 1)  # a window's first token has no context
        if end > first:
            windows.append((begin, end, first))
        scored_up_to = end
        if end == n_tokens:
            break
    return windows


@torch.no_grad()
@packed_inference
def decoder_perplexity(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
    windows: int | None = None,
) -> Perplexity:
    """Sliding-window perplexity of a decoder on ``texts`` (see the module docstring).

    ``max_length`` defaults to the model's positions, ``stride`` to half of ``max_length``;
    ``batch_size`` windows go through the model together (their logits, batch x max_length
    x vocabulary floats, bound the memory). ``progress`` shows a bar on standard error.
    ``windows``: score that many windows spread evenly across all (default: all).
    """
    if model.config.form != "decoder":
        raise TriformError(f"sliding-window perplexity needs a decoder, not {model.config.form}")
    max_length = _check_length(model, max_length)
    stride = max(1, max_length // 2) if stride is None else stride
    if batch_size < 1:
        raise TriformError("batch_size must be positive")
    rows: list[list[int]] = []
    first: list[int] = []  # position in the row of the first scored token
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        for begin, end, scored in sliding_windows(len(ids), max_length, stride):
            rows.append(ids[begin:end])
            first.append(scored - begin)
    total_windows = len(rows)
    chosen = _spread(total_windows, windows)
    rows, first = [rows[i] for i in chosen], [first[i] for i in chosen]
    model.eval()
    total, count = 0.0, 0
    pad_id = _pad_id(model)
    for start in _batches(len(rows), batch_size, progress, "windows"):
        ids, mask = pad_rows(rows[start : start + batch_size], pad_id)  # (B, L)
        ids, mask = ids.to(model.device), mask.to(model.device)
        logits = model(ids, attention_mask=mask).logits[:, :-1]  # (B, L-1, V): next tokens
        nll = F.cross_entropy(
            logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none"
        ).view(ids.shape[0], -1)  # (B, L-1), entry j scores token j + 1
        position = torch.arange(1, ids.shape[1], device=ids.device)  # (L-1,)
        lo = torch.tensor(first[start : start + batch_size], device=ids.device)  # (B,)
        scored = (position >= lo[:, None]) & (position < mask.sum(1, keepdim=True))
        total += float(nll[scored].double().sum())
        count += int(scored.sum())
    return _finish(
        METHODS["decoder"], count, total, texts, max_length=max_length, stride=stride,
        windows=len(rows), total_windows=total_windows,
    )  # fmt: skip


def _framing(tokenizer: tokenizers.Tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text (e.g. [CLS], [SEP])."""
    probe = "a b"
    plain = tokenizer.encode(probe, add_special_tokens=False).ids
    framed = tokenizer.encode(probe).ids
    for i in range(len(framed) - len(plain) + 1):
        if framed[i : i + len(plain)] == plain:
            return framed[:i], framed[i + len(plain) :]
    return [], []


@torch.no_grad()
@packed_inference
def pseudo_perplexity(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    windows: int | None = None,
) -> Perplexity:
    """Masked-LM pseudo-perplexity of an encoder on ``texts`` (Salazar et al., 2020).

    Each text is cut into windows of ``max_length`` tokens (the tokenizer's framing, e.g.
    ``[CLS] ... [SEP]``, included); each token of a window is masked once and scored.
    ``windows``: score that many windows spread evenly across all (default: all).
    """
    if model.config.form != "encoder":
        raise TriformError(f"pseudo-perplexity needs an encoder, not {model.config.form}")
    if getattr(model, "lm_head", None) is None:
        raise TriformError(
            "pseudo-perplexity needs a masked-LM head; this encoder has "
            f"{model.config.encoder_head or 'no'} head (for ELECTRA, load the generator)"
        )
    mask_id = SpecialTokens.from_tokenizer(tokenizer).mask_id
    if mask_id is None:
        raise TriformError("pseudo-perplexity needs a mask token; the tokenizer has none")
    max_length = _check_length(model, max_length)
    prefix, suffix = _framing(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    if room < 1:
        raise TriformError(f"max_length {max_length} leaves no room inside the special tokens")
    if batch_size < 1:
        raise TriformError("batch_size must be positive")
    chunks: list[list[int]] = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        chunks += [ids[begin : begin + room] for begin in range(0, len(ids), room)]
    chosen = [chunks[i] for i in _spread(len(chunks), windows)]
    framed = [[*prefix, *chunk, *suffix] for chunk in chosen]
    copies = [(w, len(prefix) + j) for w, chunk in enumerate(chosen) for j in range(len(chunk))]
    model.eval()
    pad_id = _pad_id(model)
    use_types = bool(model.config.type_vocab_size)
    total = 0.0
    for start in _batches(len(copies), batch_size, progress, "tokens"):
        batch = copies[start : start + batch_size]
        ids, mask = pad_rows([framed[w] for w, _ in batch], pad_id)  # (B, L)
        where = torch.tensor([p for _, p in batch])  # (B,)
        rows = torch.arange(len(batch))
        truth = ids[rows, where].clone()  # (B,)
        ids[rows, where] = mask_id
        ids, mask = ids.to(model.device), mask.to(model.device)
        types = torch.zeros_like(ids) if use_types else None
        hidden = model(ids, mask, types, compute_logits=False).last_hidden_state  # (B, L, D)
        logits = model.lm_head(hidden[rows.to(ids.device), where.to(ids.device)])  # (B, V)
        nll = F.cross_entropy(logits.float(), truth.to(ids.device), reduction="sum")
        total += float(nll)
    return _finish(
        METHODS["encoder"], len(copies), total, texts, max_length=max_length,
        windows=len(chosen), total_windows=len(chunks),
    )  # fmt: skip


@torch.no_grad()
@packed_inference
def seq2seq_perplexity(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    progress: bool = False,
    windows: int | None = None,
) -> Perplexity:
    """Perplexity of an encoder-decoder on the targets of ``(source, target)`` pairs, both
    framed by the tokenizer as in ``seq2seq`` training and cut to the model's positions.
    ``windows``: score that many pairs spread evenly across all (default: all)."""
    config = model.config
    if config.form != "encoder-decoder":
        raise TriformError(f"seq2seq perplexity needs an encoder-decoder, not {config.form}")
    if not pairs:
        raise TriformError("no source/target pairs to score")
    if batch_size < 1:
        raise TriformError("batch_size must be positive")
    total_pairs = len(pairs)
    pairs = [pairs[i] for i in _spread(total_pairs, windows)]
    limit = config.max_positions
    corpus = ParallelCorpus.from_pairs(pairs, tokenizer, limit, limit)
    pad_id = _pad_id(model)
    start_id = config.decoder_start_token_id
    start_id = start_id if start_id is not None else pad_id
    model.eval()
    total, count = 0.0, 0
    for begin in _batches(len(pairs), batch_size, progress, "pairs"):
        batch = corpus.collate(torch.arange(begin, min(begin + batch_size, len(pairs))), pad_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        labels = batch["target_ids"].masked_fill(batch["target_mask"] == 0, IGNORE_INDEX)  # (B, T)
        logits = model(
            batch["input_ids"],
            batch["attention_mask"],
            decoder_input_ids=shift_right(labels, start_id, pad_id),
            decoder_attention_mask=batch["target_mask"],
        ).logits  # (B, T, V)
        nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum")
        total += float(nll)
        count += int(batch["target_mask"].sum())
    return _finish(
        METHODS["encoder-decoder"], count, total, [t for _, t in pairs],
        windows=len(pairs), total_windows=total_pairs,
    )  # fmt: skip


def read_pairs_file(path: str | Path) -> list[tuple[str, str]]:
    """Source/target pairs of a JSONL file (``source``, ``target``) or a TSV (one
    ``source<TAB>target`` a line)."""
    path = Path(path)
    if path.suffix not in JSONL_SUFFIXES:
        return read_pairs(path)
    pairs = []
    for number, row in read_jsonl(path):
        source, target = row.get("source"), row.get("target")
        if not isinstance(source, str) or not isinstance(target, str):
            raise TriformError(f"{path}:{number}: needs string fields 'source' and 'target'")
        pairs.append((source, target))
    if not pairs:
        raise TriformError(f"{path}: no source/target pairs")
    return pairs


def perplexity(
    model: TransformerModel,
    tokenizer: tokenizers.Tokenizer,
    files: Sequence[str | Path],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    windows: int | None = None,
) -> Perplexity:
    """Perplexity of ``model`` on ``files``, by the method of its form (module docstring):
    text files for decoders and encoders (read exactly, UTF-8), pair files (TSV or JSONL)
    for encoder-decoders; every window, or ``windows`` of them spread evenly."""
    if not files:
        raise TriformError("no files to evaluate")
    form = model.config.form
    options: dict[str, Any] = {"progress": progress, "windows": windows}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if form == "encoder-decoder":
        if max_length is not None or stride is not None:
            raise TriformError("max_length and stride are for decoders and encoders")
        pairs = [pair for f in files for pair in read_pairs_file(f)]
        result = seq2seq_perplexity(model, tokenizer, pairs, **options)
    else:
        texts = [read_text(f) for f in files]
        if form == "decoder":
            result = decoder_perplexity(
                model, tokenizer, texts, max_length=max_length, stride=stride, **options
            )
        else:
            if stride is not None:
                raise TriformError("stride is for decoders; encoders score disjoint windows")
            result = pseudo_perplexity(model, tokenizer, texts, max_length=max_length, **options)
    result.files = [str(f) for f in files]
    return result
