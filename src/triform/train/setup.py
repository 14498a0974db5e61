"""Getting a run ready: its tokenizer, its model config fitted to that tokenizer, its shards."""

from __future__ import annotations

import glob
from pathlib import Path

import tokenizers

from triform.config import ModelConfig
from triform.data import Corpus, default_corpus
from triform.data.shards import ShardSet, prepare_shards
from triform.errors import ConfigError
from triform.tokenizers import (
    FAMILIES,
    SpecialTokens,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from triform.train.distributed import barrier, is_main_process
from triform.train.run_config import RunConfig

# Model families the tokenizer module has no special-token convention of its own for.
TOKENIZER_FAMILY_FALLBACK = {"transformer": "bart"}


def tokenizer_family(model_family: str) -> str:
    """The tokenizer family (special tokens, templates) a model family trains with."""
    if model_family in FAMILIES:
        return model_family
    return TOKENIZER_FAMILY_FALLBACK.get(model_family, "gpt2")


def load_validation(config: RunConfig) -> Corpus | None:
    """The run's validation corpus (``data.validation``), or None to hold out a share."""
    if config.data.validation is None:
        return None
    return Corpus.from_paths(
        config.data.validation,
        text_field=config.data.text_field,
        split_documents=config.data.split_documents,
    )


def load_corpus(config: RunConfig) -> Corpus:
    """The run's corpus: the embedded default or the configured paths."""
    paths = config.data.corpus
    if paths == ["default"]:
        return default_corpus()
    if "default" in paths:
        raise ConfigError("data.corpus: 'default' cannot be mixed with paths")
    missing = [p for p in paths if not glob.glob(p)]
    if missing and config.data.if_missing == "default":
        if is_main_process():
            print(f"corpus {missing[0]} not found: using the embedded default corpus instead")
        return default_corpus()
    return Corpus.from_paths(
        paths, text_field=config.data.text_field, split_documents=config.data.split_documents
    )


def prepare_tokenizer(config: RunConfig, out_dir: Path) -> tokenizers.Tokenizer:
    """Load the configured tokenizer, or train one on the corpus (once) and save it."""
    section = config.tokenizer
    if section.path is not None and Path(section.path).exists():
        tokenizer = load_tokenizer(section.path)
        if is_main_process():
            save_tokenizer(tokenizer, out_dir / "tokenizer.json")  # the run folder is complete
        return tokenizer
    target = Path(section.path) if section.path else out_dir / "tokenizer.json"
    if target.exists():
        return load_tokenizer(target)
    family = section.family or tokenizer_family(config.model.family)
    if is_main_process():
        tokenizer = train_tokenizer(
            _tokenizer_corpus(config),
            kind=section.kind,
            vocab_size=section.vocab_size,
            family=family,
            lowercase=section.lowercase,
        )
        save_tokenizer(tokenizer, target)
    barrier()
    return load_tokenizer(target)


def _tokenizer_corpus(config: RunConfig):
    if config.data.sources is not None:
        from triform.data.objectives.seq2seq import read_pairs

        pairs = read_pairs(config.data.sources)
        return [[source, target] for source, target in pairs]
    return load_corpus(config)


def resolve_model_config(config: RunConfig, tokenizer: tokenizers.Tokenizer) -> ModelConfig:
    """The model config with vocabulary size and special ids taken from the tokenizer."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    model = config.model
    updates: dict = {"vocab_size": tokenizer.get_vocab_size(with_added_tokens=True)}
    for field_name, token_id in (
        ("pad_token_id", special.pad_id),
        ("bos_token_id", special.bos_id if special.bos_id is not None else special.cls_id),
        ("eos_token_id", special.eos_id if special.eos_id is not None else special.sep_id),
    ):
        if token_id is not None:
            updates[field_name] = token_id
    if model.form == "encoder-decoder":
        start = special.pad_id if model.family == "t5" else updates.get("eos_token_id")
        if start is not None:
            updates["decoder_start_token_id"] = start
    return model.replace(**updates)


def prepare_data(config: RunConfig, tokenizer: tokenizers.Tokenizer, out_dir: Path):
    """Tokenize the corpus (and ``data.validation``) into shards once; returns (train, val)
    shard sets.

    Sequence-to-sequence runs read their TSV directly and return ``None``.
    """
    if config.data.sources is not None:
        return None
    shards_dir = Path(config.data.shards_dir) if config.data.shards_dir else out_dir / "data"
    if is_main_process():
        prepare_shards(
            load_corpus(config),
            tokenizer,
            shards_dir,
            validation=load_validation(config),
            val_fraction=config.data.val_fraction or 0.0,
            progress=config.train.progress,
            workers=config.data.workers,
            seed=config.train.seed,
        )
    barrier()
    train = ShardSet(shards_dir, split="train", tokenizer=tokenizer)
    val = ShardSet(shards_dir, split="val", tokenizer=tokenizer)
    return train, val
