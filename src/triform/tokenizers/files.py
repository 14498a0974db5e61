"""Load, save and fingerprint ``tokenizer.json`` files (the HuggingFace ``tokenizers`` format)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import tokenizers

from triform.errors import TriformError
from triform.outputs import write_output

TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(path: str | os.PathLike[str]) -> tokenizers.Tokenizer:
    """Load any HuggingFace ``tokenizer.json`` (a file, or a folder that holds one).

    Padding and truncation settings stored in the file are switched off, as ``transformers``
    does when it wraps a tokenizer (triform pads and cuts in its readers). A missing or
    unreadable file is a :class:`TriformError` with a one-line message.
    """
    p = Path(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise TriformError(f"tokenizer file not found: {p}")
    try:
        tok = tokenizers.Tokenizer.from_file(str(p))
    except Exception as err:  # the Rust side raises a bare Exception for any parse error
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TriformError(f"{p} is not a valid tokenizer.json: {first}") from None
    return _without_padding(tok)


def tokenizer_from_str(text: str) -> tokenizers.Tokenizer:
    """A tokenizer from the text of a ``tokenizer.json``, as :func:`load_tokenizer` reads it."""
    return _without_padding(tokenizers.Tokenizer.from_str(text))


def _without_padding(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    # Like transformers, ignore stored padding/truncation: triform's readers do both.
    tok.no_padding()
    tok.no_truncation()
    return tok


def save_tokenizer(tok: tokenizers.Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write ``tok`` as a standard ``tokenizer.json`` (atomically; parent folders created).

    ``path`` may be a folder, in which case ``tokenizer.json`` is written inside it. Returns
    the file written.
    """
    p = tokenizer_file(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_output(p, tok.to_str(pretty=True))  # an OS error names the path


def tokenizer_file(path: str | os.PathLike[str]) -> Path:
    """The ``tokenizer.json`` that ``path`` means: the file, or the one in a folder."""
    p = Path(path)
    return p / TOKENIZER_FILE if p.is_dir() else p


def tokenizer_hash(tok: tokenizers.Tokenizer) -> str:
    """A SHA-256 of everything in ``tok`` that decides token ids (normalizer, pre-tokenizer,
    model, added tokens, post-processor), independent of JSON formatting and of runtime
    settings (padding, truncation, subword sampling)."""
    # Scores are rounded: a save/load round trip may change a float's last digit.
    data = json.loads(tok.to_str(), parse_float=lambda text: f"{float(text):.9g}")
    data.pop("padding", None)
    data.pop("truncation", None)
    model = data.get("model") or {}
    for key in ("dropout", "alpha", "nbest_size"):
        model.pop(key, None)
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
