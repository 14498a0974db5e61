"""Sentence-end tokens: merged punctuation (byte-BPE ``!--``, ``."``) ends a sentence too."""

from __future__ import annotations

import pytest

from triform.objectives import context_from_tokenizer
from triform.tokenizers import train_tokenizer
from triform.tokenizers.sentences import ends_sentence, sentence_end_ids, token_text

TEXT = 'He cried "Stop!--now." Then (quietly.) "Go." Etc., and so on: wait... ok… fine?!\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (".", True),
        ("!--", True),
        ('."', True),
        (".)", True),
        ("?!", True),
        ("...", True),
        (" .\n", True),
        (".,", False),
        (":", False),
        ("e.g.", False),
        ("--", False),
        ("", False),
    ],
)
def test_ends_sentence(text, expected):
    assert ends_sentence(text) is expected


def test_byte_bpe_merged_marks_are_sentence_ends():
    tok = train_tokenizer([TEXT] * 40, kind="byte-bpe", vocab_size=330)
    vocab = tok.get_vocab()
    assert {"!--", '."', ".)"} <= set(vocab)  # the merges this text makes
    ends = {tok.id_to_token(i) for i in sentence_end_ids(tok)}
    assert {".", "!", "?", "!--", '."', ".)"} <= ends
    assert ".," not in ends and "," not in ends and "Ġ(" not in ends
    assert token_text("âĢ¦", byte_level=True) == "…" and "âĢ¦" in ends
    assert context_from_tokenizer(tok)["sentence_end_ids"] == sentence_end_ids(tok)
    # the ids at the ends of the sentences of the text, found by one table lookup
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    found = [tok.id_to_token(i) for i in ids if i in set(sentence_end_ids(tok))]
    assert '."' in found and ".)" in found and found.count(".,") == 0


def test_wordpiece_and_metaspace_markers():
    for kind in ("wordpiece", "bpe"):
        tok = train_tokenizer([TEXT] * 40, kind=kind, vocab_size=200)
        ends = {token_text(tok.id_to_token(i)).strip() for i in sentence_end_ids(tok)}
        assert {".", "!", "?"} <= ends and "," not in ends
