"""Which tokens of a vocabulary end a sentence: the id table that sentence-level objectives
(BART's sentence permutation) look tokens up in, so that finding sentence ends in a batch is
one vectorised gather.

A token ends a sentence when its text (word markers ``Ġ`` / ``▁`` / ``##`` and byte-level
symbols turned back into characters, outer whitespace removed) is punctuation only and ends
with a sentence mark, possibly followed by closing quotes, brackets or dashes: ``.``, ``?!``,
``."``, ``!--``, ``.)`` and ``...`` do; ``.,``, ``:`` and ``e.g.`` do not.
"""

from __future__ import annotations

import unicodedata
from functools import cache

import tokenizers
from tokenizers import decoders

SENTENCE_END_MARKS: tuple[str, ...] = (".", "!", "?", "…", "。", "！", "？")
_CLOSING = {"Pe", "Pf", "Pd"}  # closing brackets, closing quotes, dashes
_QUOTES = "\"'"
_PREFIXES = ("##", "▁", "Ġ")


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, read back: printable bytes stand for themselves, the others
    (space, newline, control bytes, ...) for the characters 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def token_text(token: str, byte_level: bool = False) -> str:
    """The text a vocabulary entry stands for, word markers read as spaces (byte-level
    symbols decoded to UTF-8; a piece of a multi-byte character gives ``""``)."""
    if byte_level:
        table = _byte_decoder()
        if not all(c in table for c in token):
            return token
        try:
            return bytes(table[c] for c in token).decode("utf-8")
        except UnicodeDecodeError:
            return ""
    for prefix in _PREFIXES:
        token = token.replace(prefix, " ") if prefix != "##" else token.removeprefix(prefix)
    return token


def ends_sentence(text: str) -> bool:
    """Whether ``text`` (a token's text) is punctuation ending with a sentence mark."""
    text = text.strip()
    if not text or not all(unicodedata.category(c).startswith("P") for c in text):
        return False
    end = len(text)
    while end > 0 and (unicodedata.category(text[end - 1]) in _CLOSING or text[end - 1] in _QUOTES):
        end -= 1
    return end > 0 and text[end - 1] in SENTENCE_END_MARKS


def is_byte_level(tokenizer: tokenizers.Tokenizer) -> bool:
    """Whether ``tokenizer`` writes its tokens in GPT-2's byte-level alphabet."""
    return isinstance(tokenizer.decoder, decoders.ByteLevel)


def sentence_end_ids(tokenizer: tokenizers.Tokenizer) -> list[int]:
    """The sorted ids of the tokens that end a sentence (see the module docstring); special
    tokens never do."""
    byte_level = is_byte_level(tokenizer)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    return sorted(
        index
        for token, index in vocab.items()
        if token not in special and ends_sentence(token_text(token, byte_level))
    )
