"""The tokenizer files of an HF folder: ``tokenizer.json`` plus the ``tokenizer_config.json``
and ``special_tokens_map.json`` that ``transformers.AutoTokenizer.from_pretrained`` needs to
wrap it as a ``PreTrainedTokenizerFast`` with its special tokens."""

from __future__ import annotations

from pathlib import Path

import tokenizers

from triform.interop.hf.files import write_json
from triform.tokenizers import SpecialTokens, save_tokenizer


def special_tokens_map(tokenizer: tokenizers.Tokenizer) -> dict[str, str]:
    """transformers' special-token roles (``pad_token``, ``cls_token``, ...) of ``tokenizer``,
    found as triform finds them (:class:`~triform.tokenizers.SpecialTokens`)."""
    specials = SpecialTokens.from_tokenizer(tokenizer)
    roles = {
        "pad_token": specials.pad_id,
        "unk_token": specials.unk_id,
        "cls_token": specials.cls_id,
        "sep_token": specials.sep_id,
        "mask_token": specials.mask_id,
        "bos_token": specials.bos_id,
        "eos_token": specials.eos_id,
    }
    found = {role: tokenizer.id_to_token(i) for role, i in roles.items() if i is not None}
    return {role: token for role, token in found.items() if token is not None}


def save_tokenizer_files(
    tokenizer: tokenizers.Tokenizer,
    directory: str | Path,
    *,
    token_types: bool,
    model_max_length: int | None = None,
    pad_id: int | None = None,
) -> Path:
    """Write the three tokenizer files into ``directory``. ``token_types``: whether the model
    takes ``token_type_ids`` (BERT-style segments); ``model_max_length``: the longest input
    the model takes (where it has a position table); ``pad_id``: the padding token where
    the tokenizer has no pad token of its own (GPT-2 pads with ``<|endoftext|>``)."""
    directory = Path(directory)
    save_tokenizer(tokenizer, directory / "tokenizer.json")
    special = special_tokens_map(tokenizer)
    if "pad_token" not in special and pad_id is not None:
        special["pad_token"] = tokenizer.id_to_token(pad_id)
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if token_types else None
    config: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_input_names": inputs or ["input_ids", "attention_mask"],
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    write_json(directory / "tokenizer_config.json", config)
    write_json(directory / "special_tokens_map.json", special)
    return directory
